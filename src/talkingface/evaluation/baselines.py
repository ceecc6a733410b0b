"""Baselines that need no training of their own, measured with the same renderer as the model.

The loudness-driven mouth is the cheapest trick that looks synced: the lips open in proportion to
the speech envelope. It keeps the model's renderer (warp + mask + residual) and replaces only the
motion: every frame's lower-face landmark offsets are ``a(t) * D``, with ``a(t)`` the clip's
loudness scaled to [0, 1] and ``D`` the average "mouth open" displacement of the training
speakers (a linear fit of every landmark's offset on the lip gap over the train split). Every
metric must rank it below the real model, or the metric is not measuring lip shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import AudioConfig
from ..face import LIP_INNER_BOTTOM, LIP_INNER_TOP, LOWER_FACE

_TOP, _BOTTOM = list(LOWER_FACE).index(LIP_INNER_TOP), list(LOWER_FACE).index(LIP_INNER_BOTTOM)


def lip_gap(points: np.ndarray) -> np.ndarray:
    """(..., K, 2) lower-face points (crop units) -> (...) inner-lip gap."""
    return np.linalg.norm(points[..., _TOP, :] - points[..., _BOTTOM, :], axis=-1)


def open_direction(tracks) -> np.ndarray:
    """The mean landmark displacement from a closed to a widely open mouth, (K, 2) crop units.

    tracks: (points (T, K, 2) lower-face landmarks in crop units, found (T,) bool) per clip. Per
    clip, offsets are taken from the clip's mean shape; the slope of each coordinate on the lip
    gap is fitted over all frames, then scaled by the gap's 5..95 percentile range."""
    offs, gaps = [], []
    for points, found in tracks:
        p = np.asarray(points, np.float64)[np.asarray(found, bool)]
        if len(p) < 2:
            continue
        offs.append((p - p.mean(0)).reshape(len(p), -1))
        g = lip_gap(p)
        gaps.append(g - g.mean())
    if not offs:
        raise ValueError("no clip with landmarks")
    x, g = np.concatenate(offs), np.concatenate(gaps)
    slope = (g @ x) / max(float(g @ g), 1e-12)  # (2K,)
    span = float(np.percentile(g, 95) - np.percentile(g, 5))
    return (slope * span).reshape(-1, 2).astype(np.float32)


def corpus_open_direction(corpus, rows: list[dict], crop_size: int) -> np.ndarray:
    """``open_direction`` of a corpus's clips (e.g. its train split), from their stored landmarks."""
    from ..data.corpus import load_landmarks

    tracks = []
    for r in rows:
        lm, found = load_landmarks(corpus, r)
        tracks.append((lm[:, LOWER_FACE] / crop_size, found))
    return open_direction(tracks)


def loudness_activation(loud_db: np.ndarray, min_range_db: float = 10.0) -> np.ndarray:
    """Per-frame loudness (dB) -> mouth activation in [0, 1]: 0 at the clip's quiet level (10th
    percentile), 1 at its loud level (95th), linear in dB in between; the range is at least
    ``min_range_db`` so a clip of near-constant level does not flap."""
    lo, hi = float(np.percentile(loud_db, 10)), float(np.percentile(loud_db, 95))
    return np.clip((np.asarray(loud_db, np.float64) - lo) / max(hi - lo, min_range_db), 0, 1).astype(np.float32)


def render_motion(model, ref_crop: np.ndarray, ref_points: np.ndarray, offsets: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Render given lower-face landmark offsets (T, K, 2) with the generator's renderer. The
    renderer also reads the GRU's features; they are computed from an all-zero (utterance-mean)
    audio input, so no audio information reaches it. -> (T, S, S, 3) uint8 crops."""
    from ..inference import generate_crops

    mel = torch.zeros(len(offsets), model.cfg.audio.n_mels, AudioConfig().window_steps)
    return np.stack([c for c, _ in generate_crops(model, ref_crop, ref_points, mel, chunk, offsets=offsets)])
