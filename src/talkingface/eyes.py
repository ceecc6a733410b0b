"""Blinks for a talking photo: when the eyes close, and how the upper lid moves down over them.

The schedule (``blink_schedule``) follows what talking people do: about 17 blinks a minute
(intervals drawn from a gamma distribution, at least 1.2 s apart), each 120-280 ms long, the lid
closing in about a third of that and opening in the rest, and seven in ten blinks that fall inside
speech moved to the nearest pause within half a second when there is one (people blink more at
pauses than mid-word, but not only there). It is deterministic under its seed.

The drawing (``EyeLids``) moves each upper lid down, not a cross-fade: per column between the eye's
corners, the skin between the brow line and the upper lid is stretched down so the lid margin
(lashes and all) reaches ``closure`` of the way to the lower lid, and what lies below the moved
margin is the eye as it was. Only the eye regions' pixels change; the photo's own lid skin covers
the eye, so colour and light are the photo's. Photos whose eyes are already closed get no blinks.
"""

from __future__ import annotations

import cv2
import numpy as np

# MediaPipe face-mesh eyelid contours, corner to corner (the same two corners in both lists).
UPPER_LIDS = ([33, 246, 161, 160, 159, 158, 157, 173, 133], [263, 466, 388, 387, 386, 385, 384, 398, 362])
LOWER_LIDS = ([33, 7, 163, 144, 145, 153, 154, 155, 133], [263, 249, 390, 373, 374, 380, 381, 382, 362])
CLOSED_EYES = 0.12  # eye opening / eye width below which a photo's eyes count as closed
BLINKS_PER_MINUTE = 17.0
PAUSE_BIAS = 0.7  # the share of blinks that move to a pause nearby (the rest fall where they fall)


def blink_schedule(n_frames: int, fps: float = 25.0, speaking: np.ndarray | None = None, seed: int = 0,
                   rate_per_minute: float = BLINKS_PER_MINUTE) -> np.ndarray:
    """(n_frames,) float32 lid closure per frame, 0 = open, 1 = shut. ``speaking``: (n_frames,)
    bool, True where there is speech (blinks move to a pause nearby when there is one)."""
    rng = np.random.default_rng(seed)
    closure = np.zeros(n_frames, np.float32)
    mean_gap = 60.0 / rate_per_minute
    t = rng.uniform(0.3, mean_gap)  # the first blink comes at a random moment, not at the start
    while True:
        dur = rng.uniform(0.12, 0.28)
        start = t
        seek_pause = rng.random() < PAUSE_BIAS
        if speaking is not None and len(speaking) and seek_pause:
            f = int(t * fps)
            if 0 <= f < len(speaking) and speaking[f]:
                near = [g for g in range(max(0, f - int(0.5 * fps)), min(len(speaking), f + int(0.5 * fps) + 1))
                        if not speaking[g]]
                if near:
                    start = min(near, key=lambda g: abs(g - f)) / fps
        if start + dur > n_frames / fps:
            break
        depth = rng.uniform(0.85, 1.0)  # some blinks stop just short of shut
        close = dur * 0.35
        for f in range(int(np.floor(start * fps)), min(n_frames, int(np.ceil((start + dur) * fps)) + 1)):
            s = (f + 0.5) / fps - start  # time into the blink at the frame's centre
            if 0 <= s < close:
                c = s / close
            elif close <= s <= dur:
                c = 1.0 - (s - close) / (dur - close)
            else:
                continue
            closure[f] = max(closure[f], depth * (0.5 - 0.5 * np.cos(np.pi * c)))  # eased in and out
        t = start + dur + max(1.2, rng.gamma(4.0, mean_gap / 4.0))
    return closure


def eye_openness(landmarks: np.ndarray) -> float:
    """Mean over both eyes of the lid gap at the middle over the eye's width (0 = shut)."""
    out = []
    for up, lo in zip(UPPER_LIDS, LOWER_LIDS):
        width = np.linalg.norm(landmarks[up[0]] - landmarks[up[-1]]) + 1e-6
        gap = np.linalg.norm(landmarks[up[1:-1]] - landmarks[lo[1:-1]], axis=1).max()
        out.append(gap / width)
    return float(np.mean(out))


class EyeLids:
    """Draws closed or closing upper lids on frames of one photo (its landmarks, pixels)."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...]):
        h, w = shape[:2]
        self.eyes = []
        self.open = eye_openness(landmarks) >= CLOSED_EYES
        for up, lo in zip(UPPER_LIDS, LOWER_LIDS):
            u, l_ = landmarks[up].astype(np.float64), landmarks[lo].astype(np.float64)
            width = abs(u[-1, 0] - u[0, 0])
            gap = max(1.0, float(np.max(l_[:, 1] - u[:, 1])))
            x0 = int(np.floor(min(u[:, 0].min(), l_[:, 0].min()) - 0.15 * width))
            x1 = int(np.ceil(max(u[:, 0].max(), l_[:, 0].max()) + 0.15 * width))
            lift = 1.6 * gap + 0.15 * width  # the brow line sits this far above the upper lid
            y0 = int(np.floor(u[:, 1].min() - lift))
            y1 = int(np.ceil(l_[:, 1].max() + 2))
            x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            xs = np.arange(x0, x1, dtype=np.float64)
            order_u, order_l = np.argsort(u[:, 0]), np.argsort(l_[:, 0])
            top = np.interp(xs, u[order_u, 0], u[order_u, 1])  # (W,) upper lid per column
            bottom = np.interp(xs, l_[order_l, 0], l_[order_l, 1])
            inside = (xs > u[:, 0].min()) & (xs < u[:, 0].max())
            travel = np.where(inside, np.maximum(0.0, bottom - top), 0.0)  # how far the lid can move
            # Feather the travel to zero over the outer 15 % at each corner so no seam shows there.
            edge = np.clip(np.minimum(xs - u[:, 0].min(), u[:, 0].max() - xs) / (0.15 * width + 1e-6), 0, 1)
            self.eyes.append((x0, y0, x1, y1, top, travel * edge, lift))

    def draw(self, frame: np.ndarray, closure: float) -> np.ndarray:
        """``frame`` with both upper lids moved ``closure`` (0-1) of the way down; a copy where
        anything changes, ``frame`` itself where nothing does."""
        if closure <= 0.0 or not self.open or not self.eyes:
            return frame
        out = np.array(frame)
        for x0, y0, x1, y1, top, travel, lift in self.eyes:
            ys = np.arange(y0, y1, dtype=np.float64)[:, None]  # (H, 1)
            moved = top + closure * travel  # (W,) the lid margin's new row
            brow = top - lift
            # Backward map: rows between the brow and the moved margin take the lid skin between the
            # brow and the margin's old row, stretched; rows below the moved margin stay as they were.
            scale = (top - brow) / np.maximum(moved - brow, 1e-6)
            src_y = np.where((ys >= brow) & (ys <= moved), brow + (ys - brow) * scale, ys)
            map_y = src_y.astype(np.float32)
            map_x = np.broadcast_to(np.arange(x0, x1, dtype=np.float32)[None], map_y.shape).copy()
            out[y0:y1, x0:x1] = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out
