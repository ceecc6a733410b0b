"""Paste generated lower faces back into the FULL original photo, at the photo's resolution.

The generator works on a 128 px aligned crop, but what it outputs per frame is a backward flow,
a blend mask and a small RGB residual (see ``models/generator.py``). Instead of upsampling a
128 px face into a sharp photo (which looks blurred and shows a seam box), the flow is carried to
image space and applied to the original high-resolution pixels; only the residual (the mouth
interior) is upsampled. A feathered paste mask, defined in crop space, fades the edit to zero at
the half-way line and at the crop border, so no seam appears.
"""

from __future__ import annotations

import cv2
import numpy as np

from .face import invert, transform_points


class PhotoCompositor:
    """Per-photo precomputation (region of interest, crop coordinates of its pixels, paste mask);
    ``compose`` then costs a few remaps of that region per frame."""

    def __init__(self, image: np.ndarray, m: np.ndarray, crop_size: int, feather_rows: int = 8, edge: float = 0.06):
        self.image = image
        self.s = s = crop_size
        self.m = np.asarray(m, np.float64)
        self.minv = invert(self.m).astype(np.float64)
        h, w = image.shape[:2]
        corners = np.array([[0, s / 2], [s, s / 2], [0, s], [s, s]], np.float32)
        pts = transform_points(self.minv.astype(np.float32), corners)
        x0, y0 = np.floor(pts.min(0)).astype(int) - 2
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
        self.x0, self.y0 = max(0, x0), max(0, y0)
        self.x1, self.y1 = min(w, x1), min(h, y1)
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("face region lies outside the image")
        ys, xs = np.mgrid[self.y0:self.y1, self.x0:self.x1].astype(np.float64)
        # crop coordinates (pixels) of every ROI pixel
        self.cx = (self.m[0, 0] * xs + self.m[0, 1] * ys + self.m[0, 2]).astype(np.float32)
        self.cy = (self.m[1, 0] * xs + self.m[1, 1] * ys + self.m[1, 2]).astype(np.float32)
        # lower-half map coordinates for sampling the generator's (S/2, S) outputs
        self.u = self.cx
        self.v = self.cy - s / 2
        # Paste mask: ramps in over the first feather rows of the lower half, out at the crop's
        # bottom and side borders (edge = fraction of the crop), zero outside the crop.
        e = edge * s
        ramp_top = np.clip(self.v / max(1, feather_rows), 0, 1)
        ramp_bottom = np.clip((s - self.cy) / e, 0, 1)
        ramp_side = np.clip(np.minimum(self.cx, s - self.cx) / e, 0, 1)
        pm = ramp_top * ramp_bottom * ramp_side
        self.paste = (pm * pm * (3 - 2 * pm)).astype(np.float32)[..., None]  # smoothstep: no visible edge
        self.roi = image[self.y0:self.y1, self.x0:self.x1].astype(np.float32)

    def compose(self, flow: np.ndarray, mask: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """flow (2, S/2, S) in crop units, mask (1, S/2, S) in [0, 1], residual (3, S/2, S) in
        [-1, 1] -> the full image (H, W, 3) uint8 with the edited lower face."""
        s = self.s

        def sample(a):  # (S/2, S) crop-space map -> ROI
            return cv2.remap(np.ascontiguousarray(a, np.float32), self.u, self.v, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)

        fx, fy = sample(flow[0]), sample(flow[1])
        mk = sample(mask[0])[..., None]
        res = np.stack([sample(residual[c]) for c in range(3)], -1)
        res = (res + 1) * 127.5
        # source position in crop pixels -> in image pixels
        sx = self.cx + fx * s
        sy = self.cy + fy * s
        mx = (self.minv[0, 0] * sx + self.minv[0, 1] * sy + self.minv[0, 2]).astype(np.float32)
        my = (self.minv[1, 0] * sx + self.minv[1, 1] * sy + self.minv[1, 2]).astype(np.float32)
        warped = cv2.remap(self.image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        edited = mk * warped + (1 - mk) * res
        roi = self.paste * edited + (1 - self.paste) * self.roi
        out = self.image.copy()
        out[self.y0:self.y1, self.x0:self.x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
        return out
