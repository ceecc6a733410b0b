"""Head motion for a talking photo: a slow sway, breathing and small nods on stressed syllables,
drawn by moving the head region of the photo with a smooth warp.

Amplitudes come from real talking video: over the 410 prepared training clips (GRID s1 and seven
other people, `corpora/train/clips/*/*/meta.npz`, their per-frame alignments), the eye midpoint moves
with a standard deviation of 0.010-0.041 inter-ocular distances (IOD) horizontally and 0.010-0.040
vertically per speaker, the head rolls by 0.17-1.5 degrees (std) and scales by 0.2-0.7 %.
``head_schedule`` at amplitude 1 aims at the middle of that range: 0.018 IOD each way, 0.30
degrees of roll, 0.4 % of scale. The sway is a sum of slow sines (0.1-0.5 Hz) with random phases;
a nod (a dip of 0.025 IOD over ~0.3 s) follows a rise in loudness after a quieter stretch, at most
one every 0.8 s. Deterministic under its seed.

The warp (``HeadWarp``) is in the image plane (roll, shift, scale about a pivot below the chin; no
yaw or pitch): its weight is 1 over the face and hair and falls smoothly to 0 beyond them, so the
shoulders and the background stay where they are and the neck bends between. Displacements are a
few pixels, so nothing is revealed and nothing tears (the mapping stays one to one:
``HeadWarp.folds``).
"""

from __future__ import annotations

import cv2
import numpy as np

TARGET_STD = {"x": 0.018, "y": 0.018, "roll": 0.30, "scale": 0.004}  # IOD, IOD, degrees, relative
NOD_DEPTH = 0.025  # IOD


def head_schedule(n_frames: int, fps: float = 25.0, loudness_db: np.ndarray | None = None, seed: int = 0,
                  amplitude: float = 1.0) -> np.ndarray:
    """(n_frames, 4) float32 per frame: x and y shift (IOD), roll (degrees), log scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    out = np.zeros((n_frames, 4), np.float64)
    for j, key in enumerate(("x", "y", "roll", "scale")):
        freqs = rng.uniform(0.1, 0.5, 3)
        if key == "y":
            freqs[0] = rng.uniform(0.2, 0.3)  # breathing
        phases = rng.uniform(0, 2 * np.pi, 3)
        weights = rng.uniform(0.5, 1.0, 3)
        wave = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
        # Normalised by the waves' own expected spread, not the clip's: a short clip sways as far as a long one.
        out[:, j] = wave / np.sqrt((weights**2).sum() / 2) * TARGET_STD[key]
    if loudness_db is not None and len(loudness_db):
        db = np.asarray(loudness_db, np.float64)[:n_frames]
        loud = db > np.percentile(db, 95) - 12
        last = -np.inf
        for f in range(4, len(db)):
            # a stressed syllable: loud now after a quieter stretch (the 4 frames before)
            if loud[f] and not loud[f - 4: f].all() and (f - last) / fps >= 0.8:
                last = f
                k = np.arange(n_frames)
                out[:, 1] += NOD_DEPTH * np.exp(-0.5 * ((k - f - 3) / 2.5) ** 2)  # the dip peaks ~120 ms later
    return (out * amplitude).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class HeadWarp:
    """Moves the head of one photo (its 478 landmarks, pixels) by ``head_schedule``'s parameters."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...]):
        h, w = shape[:2]
        lm = np.asarray(landmarks, np.float64)
        self.iod = float(np.linalg.norm(lm[33] - lm[263]))
        lo, hi = lm.min(0), lm.max(0)
        centre = (lo + hi) / 2 - np.array([0.0, 0.12 * (hi[1] - lo[1])])  # up a little: the hair
        radii = np.array([0.62 * (hi[0] - lo[0]), 0.72 * (hi[1] - lo[1])])  # face and hair
        self.pivot = lm[152] + np.array([0.0, 0.6 * self.iod])  # below the chin: the neck
        reach = 1.5  # the weight reaches 0 at this many radii
        x0, y0 = np.floor(centre - reach * radii).astype(int)
        x1, y1 = np.ceil(centre + reach * radii).astype(int)
        self.box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        bx0, by0, bx1, by1 = self.box
        ys, xs = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
        r = np.sqrt(((xs - centre[0]) / radii[0]) ** 2 + ((ys - centre[1]) / radii[1]) ** 2)
        weight = (1.0 - _smoothstep((r - 1.0) / (reach - 1.0))).astype(np.float32)  # 1 on the head, 0 far out
        # The displacement is linear in the frame's parameters: keep its three weighted fields.
        self.xs, self.ys, self.weight = xs, ys, weight
        self.wpx = weight * (xs - np.float32(self.pivot[0]))
        self.wpy = weight * (ys - np.float32(self.pivot[1]))

    def maps(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps (map_x, map_y) over ``box`` for one frame's (x, y, roll, log scale): where
        the head's pixel at p moves to, minus p, pulled back by the weight (small motion)."""
        dx, dy, roll, log_s = (float(v) for v in params)
        a, s = np.radians(roll), np.exp(log_s)
        c1, sn = s * np.cos(a) - 1.0, s * np.sin(a)
        map_x = cv2.scaleAdd(self.wpx, -c1, cv2.scaleAdd(self.wpy, sn, cv2.scaleAdd(self.weight, -dx * self.iod, self.xs)))
        map_y = cv2.scaleAdd(self.wpy, -c1, cv2.scaleAdd(self.wpx, -sn, cv2.scaleAdd(self.weight, -dy * self.iod, self.ys)))
        return map_x, map_y

    def folds(self, params: np.ndarray) -> bool:
        """Whether the warp folds anywhere (a pixel mapped from behind its neighbour): tearing."""
        map_x, map_y = self.maps(params)
        return bool((np.diff(map_x, axis=1) <= 0).any() or (np.diff(map_y, axis=0) <= 0).any())

    def draw(self, frame: np.ndarray, params: np.ndarray) -> np.ndarray:
        """``frame`` with the head moved; only ``box`` changes (a copy)."""
        out = np.array(frame)
        if not np.any(params):
            return out
        x0, y0, x1, y1 = self.box
        map_x, map_y = self.maps(params)
        out[y0:y1, x0:x1] = cv2.remap(np.asarray(frame), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out
