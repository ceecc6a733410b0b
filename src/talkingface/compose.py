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
        self.paste = (pm * pm * (3 - 2 * pm)).astype(np.float32)[..., None]  # smoothstep: no visible edge

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
        # all six (displacement x/y in source pixels, mask, residual RGB in 0..255) are sampled onto
        # the ROI in one remap: the per-pixel work at photo resolution is one remap and two adds.
        inv = invert(src_m).astype(np.float32)  # crop -> source image pixels
        fx, fy = flow[0] * s, flow[1] * s
        maps = np.stack([inv[0, 0] * fx + inv[0, 1] * fy, inv[1, 0] * fx + inv[1, 1] * fy, mask[0],
                         *((residual + 1) * 127.5)], -1)  # (S/2, S, 6)
        roi_maps = cv2.remap(maps, self.cx, self.v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (h, w, 6)
        mk = roi_maps[..., 2:3]
        res = roi_maps[..., 3:6]
        bx, by = self._source_grid(src_m)
        mx = bx + roi_maps[..., 0]  # where each ROI pixel's warped crop pixel sits in the source image
        my = by + roi_maps[..., 1]
        warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        roi = dst[self.y0:self.y1, self.x0:self.x1].astype(np.float32)
        # paste * (mk * warped + (1 - mk) * res) + (1 - paste) * roi, in place (the hot loop of a
        # talking photo: one temporary instead of eight)
        warped -= res
        warped *= mk
        warped += res
        warped -= roi
        warped *= self.paste
        warped += roi
        warped += 0.5
        out = dst.copy()
        out[self.y0:self.y1, self.x0:self.x1] = np.clip(warped, 0, 255, out=warped).astype(np.uint8)
        # Tells the encoder that only this box differs from dst (a photo: convert just the mouth).
        return PatchedFrame.of(out, dst, (self.x0, self.y0, self.x1, self.y1))
