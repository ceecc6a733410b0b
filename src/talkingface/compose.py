"""Paste generated lower faces back into FULL original frames, at their own resolution.

The generator works on a 128 px aligned crop, but what it outputs per frame is a backward flow,
a blend mask and a small RGB residual (see ``models/generator.py``). Instead of upsampling a
128 px face into a sharp photo (which looks blurred and shows a seam box), the flow is carried to
image space and applied to the original high-resolution pixels; only the residual (the mouth
interior) is upsampled. A feathered paste mask, defined in crop space, fades the edit to zero at
the half-way line and at the crop border, so no seam appears.

For a photo, source (where pixels are taken from) and destination are the same image. For video
dubbing, the destination is each frame (its own alignment, so head motion is kept) and the
source is one reference frame with a closed mouth, which the generator animated.
"""

from __future__ import annotations

import cv2
import numpy as np

from .face import invert, transform_points
from .media import PatchedFrame


class Compositor:
    """Precomputes, for one destination geometry (frame size + alignment), the region of interest,
    the crop coordinates of its pixels and the paste mask; ``compose`` then costs a few remaps."""

    def __init__(self, shape: tuple[int, int], m: np.ndarray, crop_size: int, feather_rows: int = 8, edge: float = 0.06):
        self.s = s = crop_size
        self._grid_key: bytes | None = None  # _source_grid's cache
        m = np.asarray(m, np.float64)
        h, w = shape[:2]
        corners = np.array([[0, s / 2], [s, s / 2], [0, s], [s, s]], np.float32)
        pts = transform_points(invert(m), corners)
        x0, y0 = np.floor(pts.min(0)).astype(int) - 2
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
        self.x0, self.y0, self.x1, self.y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        self.empty = self.x1 <= self.x0 or self.y1 <= self.y0  # face region outside the frame
        if self.empty:
            return
        ys, xs = np.mgrid[self.y0:self.y1, self.x0:self.x1].astype(np.float64)
        self.cx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]).astype(np.float32)  # crop pixels
        self.cy = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]).astype(np.float32)
        self.v = self.cy - s / 2  # row in the generated lower half
        # Paste mask: ramps in over the first feather rows of the lower half, out at the crop's
        # bottom and side borders (edge = fraction of the crop), zero outside the crop.
        e = edge * s
        pm = (np.clip(self.v / max(1, feather_rows), 0, 1) * np.clip((s - self.cy) / e, 0, 1)
              * np.clip(np.minimum(self.cx, s - self.cx) / e, 0, 1))
        paste = (pm * pm * (3 - 2 * pm)).astype(np.float32)  # smoothstep: no visible edge
        self.paste, self.keep = paste, 1 - paste  # (h, w): weights of the edit and of the frame
        # The crop -> ROI sampling is fixed: OpenCV's fixed-point form of it, made once.
        self.roi_map = cv2.convertMaps(self.cx, self.v, cv2.CV_16SC2)

    def _source_grid(self, src_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ROI's crop coordinates in the source image's pixels (no motion), cached per matrix
        (one reference for a whole video)."""
        key = np.asarray(src_m, np.float64).tobytes()
        if self._grid_key != key:
            inv = invert(src_m).astype(np.float64)
            self._grid = ((inv[0, 0] * self.cx + inv[0, 1] * self.cy + inv[0, 2]).astype(np.float32),
                          (inv[1, 0] * self.cx + inv[1, 1] * self.cy + inv[1, 2]).astype(np.float32))
            self._grid_key = key
        return self._grid

    def compose(self, dst: np.ndarray, src: np.ndarray, src_m: np.ndarray, flow: np.ndarray, mask: np.ndarray,
                residual: np.ndarray) -> np.ndarray:
        """dst/src: (H, W, 3) uint8; src_m: the source's image->crop matrix; flow (2, S/2, S) in crop
        units, mask (1, S/2, S) in [0, 1], residual (3, S/2, S) in [-1, 1]. Returns a new dst image."""
        if self.empty:
            return dst.copy()
        s = self.s

        # The crop-space maps are brought to image units at crop resolution (64x128, cheap), then
        # sampled onto the ROI (displacement x/y in source pixels and mask as float, the residual
        # as 8-bit RGB): the per-pixel work at photo resolution is three remaps, two adds and two
        # weighted sums, all in OpenCV (SIMD over the 3 channels, where numpy broadcasting of
        # (h, w, 1) weights was the slowest step of a talking photo).
        inv = invert(src_m).astype(np.float32)  # crop -> source image pixels
        fx, fy = flow[0] * s, flow[1] * s
        motion = np.stack([inv[0, 0] * fx + inv[0, 1] * fy, inv[1, 0] * fx + inv[1, 1] * fy, mask[0]], -1)  # (S/2, S, 3)
        rgb = np.clip((residual.transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)  # (S/2, S, 3)
        m1, m2 = self.roi_map
        roi_motion = cv2.remap(motion, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (h, w, 3)
        res = cv2.remap(rgb, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (h, w, 3) uint8
        mk = np.ascontiguousarray(roi_motion[..., 2])
        bx, by = self._source_grid(src_m)
        mx = bx + roi_motion[..., 0]  # where each ROI pixel's warped crop pixel sits in the source image
        my = by + roi_motion[..., 1]
        warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (h, w, 3) uint8
        # paste * (mk * warped + (1 - mk) * res) + (1 - paste) * roi; blendLinear divides by the
        # weights' sum (+1e-5), which is 1 here
        face = cv2.blendLinear(warped, res, mk, 1 - mk)
        roi = dst[self.y0:self.y1, self.x0:self.x1]
        out = dst.copy()
        out[self.y0:self.y1, self.x0:self.x1] = cv2.blendLinear(face, roi, self.paste, self.keep)
        # Tells the encoder that only this box differs from dst (a photo: convert just the mouth).
        return PatchedFrame.of(out, dst, (self.x0, self.y0, self.x1, self.y1))
