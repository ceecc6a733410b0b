"""The inside of the mouth for dubbing, taken from the video itself (the Video Rewrite idea).

A dubbed video is a library of the person's own open mouths: their teeth, tongue and cavity in
their own light. For every generated frame whose lips part, ``InteriorLibrary`` picks the source
frame whose inner-lip opening and width (over the eye distance) are closest to the generated
ones, maps its inner-lip ring onto the generated ring (a least-squares affine map of the 20 points)
and pastes what lies inside, feathered, over the generator's painted fill.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from .face import LIPS, interocular

INNER_MESH = LIPS[20:40]  # the inner-lip ring in face-mesh numbering (upper 78 -> 308, then lower)
INNER_IN_LOWER_FACE = np.arange(20, 40)  # the same points in face.LOWER_FACE order (LIPS comes first)
RING = list(range(0, 11)) + list(range(19, 10, -1))  # polygon order round the ring
TOP, BOTTOM, LEFT, RIGHT = 5, 15, 0, 10  # 13, 14, 78, 308 within the ring


def inner_shape(ring: np.ndarray, iod: float) -> tuple[float, float]:
    """(opening, width) of an inner-lip ring (20, 2) over the eye distance."""
    return (float(np.linalg.norm(ring[TOP] - ring[BOTTOM]) / iod),
            float(np.linalg.norm(ring[LEFT] - ring[RIGHT]) / iod))


class InteriorLibrary:
    """The open mouths of a video. ``frame_at(k)``: source frame k (H, W, 3) uint8;
    ``landmarks[k]``: its face mesh (478, 2) or None. Frames opened less than ``min_open`` eye
    distances are left out (nothing inside to take)."""

    def __init__(self, frame_at: Callable[[int], np.ndarray], landmarks: list, min_open: float = 0.08):
        self.frame_at = frame_at
        self.index, shapes, self.rings = [], [], []
        for k, lm in enumerate(landmarks):
            if lm is None:
                continue
            ring = np.asarray(lm, np.float64)[INNER_MESH]
            shape = inner_shape(ring, float(interocular(lm)))
            if shape[0] >= min_open:
                self.index.append(k)
                shapes.append(shape)
                self.rings.append(ring)
        self.shapes = np.array(shapes).reshape(-1, 2)
        self.min_open = min_open

    def __len__(self) -> int:
        return len(self.index)

    def pick(self, opening: float, width: float) -> int:
        """The library entry (not the frame number) whose mouth is shaped most like this one."""
        d = (self.shapes[:, 0] - opening) ** 2 + 0.5 * (self.shapes[:, 1] - width) ** 2
        return int(np.argmin(d))

    def paste(self, frame: np.ndarray, ring: np.ndarray, iod: float) -> np.ndarray:
        """``frame`` with the inside of the generated inner-lip ``ring`` (20, 2), pixels, replaced by
        the best-matching source mouth's; ``frame`` itself where the lips are (nearly) closed."""
        opening, width = inner_shape(ring, iod)
        if not len(self) or opening < 0.6 * self.min_open:
            return frame
        j = self.pick(opening, width)
        src_ring = self.rings[j]
        a, _ = cv2.estimateAffine2D(src_ring.astype(np.float32), ring.astype(np.float32), method=cv2.LMEDS)
        if a is None:
            return frame
        h, w = frame.shape[:2]
        pad = int(0.1 * iod) + 2
        x0, y0 = np.maximum(np.floor(ring.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(ring.max(0)).astype(int) + pad, [w, h])
        if x1 - x0 < 3 or y1 - y0 < 3:
            return frame
        shift = a.copy()
        shift[:, 2] -= (x0, y0)  # into the box's coordinates
        patch = cv2.warpAffine(self.frame_at(self.index[j]), shift, (int(x1 - x0), int(y1 - y0)),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = np.zeros((int(y1 - y0), int(x1 - x0)), np.float32)
        cv2.fillPoly(mask, [np.round(ring[RING] - (x0, y0)).astype(np.int32)], 1.0)
        k = max(1, int(0.03 * iod)) * 2 + 1  # feather by a few pixels, inside the lips
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
        mask = cv2.GaussianBlur(mask, (k, k), 0)[..., None]
        out = np.array(frame)
        roi = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(mask * patch + (1 - mask) * roi + 0.5, 0, 255).astype(np.uint8)
        return out
