"""Evaluation metrics: reconstruction (PSNR, SSIM, LMD), lip-sync (LSE-D / LSE-C with the project's
own sync expert), mouth-motion curves, temporal smoothness, silence detection and identity
preservation. Every metric is a pure function of arrays (no files, no global state).

Conventions shared by all functions:

* Images are channels-last, ``(H, W, C)`` for one frame or ``(T, H, W, C)`` for a clip (any further
  leading axes are flattened into frames), uint8 in 0..255 or float in the same units as
  ``data_range``. Per-frame values are computed first and then averaged over frames.
* Landmarks are MediaPipe face-mesh points ``(T, 478, 2)`` in pixels (x, y); a frame whose points
  contain NaN (no face found) is skipped.
* Boxes are ``(top, bottom, left, right)`` pixel bounds, half-open (``frames[:, top:bottom,
  left:right]``), in the aligned face crop of ``talkingface.face`` (eyes at row 0.34 * crop,
  inter-ocular distance 0.30 * crop).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..audio import silence_mask  # noqa: F401 (re-exported: the evaluation calls M.silence_mask)
from ..face import MOUTH_20, interocular, mouth_opening, mouth_width

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------
# Small statistics (also used by the trainer's validation)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long series (flattened); 0.0 when either is constant."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def paired_gain(a: np.ndarray, b: np.ndarray, lower_better: bool, rng: np.random.Generator,
                draws: int = 2000) -> dict:
    """System b against system a on the same items (clips), item by item: the mean gain (positive =
    b better), its 95% bootstrap interval over items and on how many items b is better. Items
    either side lacks (NaN) are left out; ``{"n": 0}`` when none is left. Pairing matters: two
    models on the same clips differ far less than the clips differ from each other."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    gain = (a - b)[ok] if lower_better else (b - a)[ok]
    if len(gain) == 0:
        return {"n": 0}
    boot = rng.choice(gain, (draws, len(gain))).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": len(gain), "gain": float(gain.mean()), "lo": float(lo), "hi": float(hi),
            "better": int((gain > 0).sum()), "a": float(a[ok].mean()), "b": float(b[ok].mean())}


# ----------------------------------------------------------------------------------------------
# Regions of the aligned crop


def _scaled(v: int, crop_size: int) -> int:
    return int(round(v * crop_size / 128))


def mouth_box(crop_size: int = 128) -> Box:
    """Mouth region of the aligned crop, ``(top, bottom, left, right)`` half-open pixel bounds.

    At 128 px the template's 20 mouth points span rows ~80-96 and columns ~47-81; the box adds a
    margin for open mouths and lip motion: rows 72..112, columns 36..92. Other crop sizes scale
    these bounds proportionally (rounded to whole pixels)."""
    return (_scaled(72, crop_size), _scaled(112, crop_size), _scaled(36, crop_size), _scaled(92, crop_size))


def upper_face_box(crop_size: int = 128) -> Box:
    """Upper half of the aligned crop (rows 0 .. crop_size // 2, all columns): the part of the face
    the generator never synthesises, used to measure identity preservation."""
    return (0, crop_size // 2, 0, crop_size)


def crop_box(frames: np.ndarray, box: Box | None) -> np.ndarray:
    """``frames[..., top:bottom, left:right, :]`` for channels-last frames; ``None`` = whole frame."""
    if box is None:
        return frames
    t, b, l, r = box
    return frames[..., t:b, l:r, :]


# ----------------------------------------------------------------------------------------------
# Reconstruction: PSNR, SSIM


def _as_frames(x: np.ndarray) -> np.ndarray:
    """(H, W, C) or (..., H, W, C) -> float64 (N, H, W, C)."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"expected channels-last images (..., H, W, C), got shape {x.shape}")
    return x.reshape((-1,) + x.shape[-3:]).astype(np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_frames(a), _as_frames(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, max_db: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    a, b: uint8 or float arrays ``(H, W, C)`` or ``(..., H, W, C)`` of equal shape, in units where
    ``data_range`` is the peak (255 for uint8). The MSE is taken over all pixels and channels of
    each frame, PSNR is computed per frame and then averaged over frames (the usual video
    convention, not the PSNR of the clip-level MSE).

    A frame identical to its reference has infinite PSNR, so the mean is ``inf`` if any frame is
    exact; pass ``max_db`` (e.g. 100) to cap each frame's value instead."""
    a, b = _check_pair(a, b)
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(float(data_range) ** 2 / mse)
    if max_db is not None:
        db = np.minimum(db, max_db)
    return float(db.mean())


def _luma(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W): ITU-R BT.601 luma for RGB, the single channel for grayscale,
    the channel mean otherwise."""
    c = x.shape[-1]
    if c == 3:
        return x @ np.array([0.299, 0.587, 0.114])
    if c == 1:
        return x[..., 0]
    return x.mean(-1)


SSIM_SIGMA, SSIM_WIN, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03


def _ssim_frame(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    blur = lambda z: cv2.GaussianBlur(z, (SSIM_WIN, SSIM_WIN), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    p = SSIM_WIN // 2  # only pixels whose whole window lies inside the image ('valid' filtering)
    return float(s[p:-p, p:-p].mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004), mean over frames; 1.0 for identical images.

    Computed on luminance: RGB frames are converted to BT.601 luma (0.299 R + 0.587 G + 0.114 B)
    first; one-channel frames are used as they are. Standard constants: Gaussian window
    sigma 1.5 truncated to 11x11, K1 = 0.01, K2 = 0.03, ``L = data_range`` (255 for uint8),
    population (not sample) variances. The SSIM map is averaged over the pixels whose full window
    lies inside the frame (a 5-pixel border is dropped), like the reference implementation's
    'valid' filtering. Frames must be at least 11x11."""
    a, b = _check_pair(a, b)
    if min(a.shape[1:3]) < SSIM_WIN:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WIN}x{SSIM_WIN}, got {a.shape[1:3]}")
    la, lb = _luma(a), _luma(b)
    return float(np.mean([_ssim_frame(x, y, float(data_range)) for x, y in zip(la, lb)]))


# ----------------------------------------------------------------------------------------------
# Landmarks: LMD, mouth curves


def _mouth_points(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, np.float64)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[-1] != 2:
        raise ValueError(f"expected landmarks (T, 478, 2), got shape {lm.shape}")
    return lm[:, MOUTH_20]


def lmd(pred_lm: np.ndarray, real_lm: np.ndarray, iod: np.ndarray | float | None = None):
    """Landmark distance of the mouth, in pixels (lower is better).

    pred_lm, real_lm: ``(T, 478, 2)`` MediaPipe landmarks in pixels of the same image space
    (generated and real frame t). Uses the 20 mouth points ``face.MOUTH_20`` (the 68-point
    scheme's 48-67). In every frame each point set is centred on its own centroid (so head
    translation does not count), the L2 distance of corresponding points is averaged over the 20
    points, then over frames. Frames where either set has a NaN mouth point are skipped
    (``nan`` if none is left).

    iod: optional inter-ocular distance of the real face, a scalar or per-frame ``(T,)``. When
    given, returns ``(lmd_px, lmd_normalised)`` where the normalised value averages each frame's
    distance divided by that frame's IOD (unitless, fraction of the inter-ocular distance);
    otherwise returns ``lmd_px`` alone."""
    p, r = _mouth_points(pred_lm), _mouth_points(real_lm)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {r.shape}")
    p = p - p.mean(1, keepdims=True)
    r = r - r.mean(1, keepdims=True)
    per_frame = np.linalg.norm(p - r, axis=-1).mean(1)  # (T,) NaN where a point is missing
    ok = np.isfinite(per_frame)
    px = float(per_frame[ok].mean()) if ok.any() else float("nan")
    if iod is None:
        return px
    d = np.broadcast_to(np.asarray(iod, np.float64), per_frame.shape)
    ok_n = ok & np.isfinite(d) & (d > 0)
    norm = float((per_frame[ok_n] / d[ok_n]).mean()) if ok_n.any() else float("nan")
    return px, norm


def mouth_curves(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame mouth shape from ``(T, 478, 2)`` landmarks: ``opening`` (inner-lip gap) and
    ``width`` (corner to corner), both divided by the frame's inter-ocular distance (unitless,
    ``face.mouth_opening`` / ``face.mouth_width``); also ``iod`` in pixels. Frames without a face
    (NaN) give NaN."""
    lm = np.asarray(landmarks, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"opening": mouth_opening(lm), "width": mouth_width(lm), "iod": interocular(lm)}


def curve_amplitude(pred: np.ndarray, real: np.ndarray) -> float:
    """How far a generated curve swings relative to the real one: std(pred) / std(real) over the
    frames where both are finite (1 = as far, < 1 = under-articulated, a still face 0). NaN where
    fewer than 2 frames remain or the real curve is constant. Correlation cannot see this: a mouth
    that follows the real one at a tenth of its amplitude correlates perfectly."""
    pred, real = np.asarray(pred, float).ravel(), np.asarray(real, float).ravel()
    if pred.shape != real.shape:
        raise ValueError(f"length mismatch: {pred.shape} vs {real.shape}")
    ok = np.isfinite(pred) & np.isfinite(real)
    if ok.sum() < 2 or real[ok].std() <= 1e-12:
        return float("nan")
    return float(pred[ok].std() / real[ok].std())


def curve_correlation(pred: np.ndarray, real: np.ndarray, offset: int = 0) -> float:
    """Pearson correlation of two per-frame curves (e.g. generated vs real mouth opening) over the
    frames where both are finite; 0.0 when either is constant or fewer than 2 frames remain.

    ``offset``: the real clip's own audio-visual offset in frames, in the convention of :func:`lse`
    (positive = the sound of a mouth shape comes that many frames later in the audio). Curves made
    from the audio (a generated mouth, loudness) are then compared with the real curve that many
    frames earlier: pred[t + offset] with real[t]. Some corpora are recorded out of sync (CREMA-D's
    video leads its audio by about 2 frames); without this a perfectly synced model is penalised."""
    pred, real = np.asarray(pred, float).ravel(), np.asarray(real, float).ravel()
    if pred.shape != real.shape:
        raise ValueError(f"length mismatch: {pred.shape} vs {real.shape}")
    o = int(offset)
    if abs(o) >= len(pred):
        return 0.0
    if o > 0:
        pred, real = pred[o:], real[:-o]
    elif o < 0:
        pred, real = pred[:o], real[-o:]
    ok = np.isfinite(pred) & np.isfinite(real)
    if ok.sum() < 2:
        return 0.0
    return pearson(pred[ok], real[ok])


# ----------------------------------------------------------------------------------------------
# Lip sync: LSE-D / LSE-C


@torch.no_grad()
def sync_distance_table(expert, lower_frames: torch.Tensor, mel_windows: torch.Tensor, max_offset: int = 15,
                        stride: int = 1, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio-visual embedding distances of every video window at every offset.

    expert: a sync expert with ``cfg.frames`` (F, 5), ``embed_video((N, F, ...)) -> (N, D)`` and
    ``embed_audio((N, 80, steps)) -> (N, D)`` unit vectors. lower_frames: the expert's per-frame video
    input, ``(T, 3, H, W)`` lower halves of the face crops in [-1, 1] (or, for a landmark expert,
    ``(T, K, 2)`` mouth motion, ``face.mouth_motion``; windows holding a NaN frame, no face, get NaN
    rows); mel_windows: ``(T, 80, steps)`` the audio window centred on each video frame. Video windows start at ``0, stride, ...`` (every start with F frames inside
    the clip); window i's middle frame is ``m = start + F // 2``.

    Returns ``(offsets, table, mids)``: offsets ``(O,)`` = -max_offset..max_offset frames; table
    ``(W, O)`` with ``table[w, o]`` the L2 distance between the unit embeddings (``sqrt(2 - 2 cos)``,
    0..2) of window w and the audio window of frame ``m + offsets[o]``; NaN where that frame lies
    outside the clip (such pairs are skipped, not clamped). A positive offset means the sound
    matching the mouth comes that many frames *later* in the given audio (audio lags video).
    Each video window and each audio frame is embedded once, in batches."""
    f = int(expert.cfg.frames)
    t = int(lower_frames.shape[0])
    if mel_windows.shape[0] != t:
        raise ValueError(f"{t} video frames but {mel_windows.shape[0]} audio windows")
    if t < f:
        raise ValueError(f"clip of {t} frames is shorter than the expert's {f}-frame window")
    was_training = getattr(expert, "training", False)
    if hasattr(expert, "eval"):
        expert.eval()
    try:
        params = list(expert.parameters()) if hasattr(expert, "parameters") else []
        dev = params[0].device if params else torch.device("cpu")
        starts = torch.arange(0, t - f + 1, stride)
        idx = starts[:, None] + torch.arange(f)[None]  # (W, F)
        ev = torch.cat([expert.embed_video(lower_frames[idx[i: i + batch_size]].float().to(dev)).float().cpu()
                        for i in range(0, len(idx), batch_size)])
        ea = torch.cat([expert.embed_audio(mel_windows[i: i + batch_size].float().to(dev)).float().cpu()
                        for i in range(0, t, batch_size)])
    finally:
        if was_training and hasattr(expert, "train"):
            expert.train()
    offsets = np.arange(-max_offset, max_offset + 1)
    mids = starts.numpy() + f // 2
    cos = (ev @ ea.T).double().numpy()  # (W, T): every window against every audio frame
    dist = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None))
    a_idx = mids[:, None] + offsets[None]  # (W, O)
    inside = (a_idx >= 0) & (a_idx < t)
    table = np.where(inside, dist[np.arange(len(mids))[:, None], np.clip(a_idx, 0, t - 1)], np.nan)
    return offsets, table, mids


def lse(expert, lower_frames: torch.Tensor, mel_windows: torch.Tensor, max_offset: int = 15,
        stride: int = 1) -> dict[str, float]:
    """Lip-sync error distance / confidence (LSE-D, LSE-C) of one clip, SyncNet style, measured with
    the project's own sync expert (so values are NOT comparable with numbers published with the
    original pretrained SyncNet: they are embedding distances of our expert, 0..2).

    Inputs as in :func:`sync_distance_table`: 5-frame video windows of ``lower_frames`` (T, 3, H, W)
    in [-1, 1], each compared with the audio window ``mel_windows`` (T, 80, steps) of its middle
    frame shifted by every offset in -max_offset..+max_offset frames (offsets leaving the clip are
    skipped for that window). Distances are L2 between unit embeddings, ``sqrt(2 - 2 cos)``.

    Returned keys (floats):

    * ``lse_d``, ``lse_c`` -- the convention of the SyncNet evaluation script used by Wav2Lip and
      followers: the distance at each offset is first averaged over the clip's windows, giving a
      curve D(offset); ``lse_d = min D`` (lower is better), ``lse_c = median D - min D`` (higher is
      better).
    * ``lse_d_window``, ``lse_c_window`` -- the per-window variant: for each window the minimum
      over offsets and (median - minimum) over offsets, then averaged over windows (each window
      picks its own best offset, so ``lse_d_window`` is usually below ``lse_d``).
    * ``offset`` -- argmin of D(offset): the clip's audio-visual offset in frames (positive = audio
      lags video; 0 for a well synced clip).
    * ``dist_at_0`` -- D(0), the mean distance at the true alignment (lower is better).
    * ``n_windows`` -- number of video windows.
    """
    return lse_from_table(*sync_distance_table(expert, lower_frames, mel_windows, max_offset, stride)[:2])


def lse_from_table(offsets: np.ndarray, table: np.ndarray) -> dict[str, float]:
    """:func:`lse` from an already computed :func:`sync_distance_table` (offsets, table). Windows
    without a finite distance (no face in one of their frames) are left out; all NaN without one."""
    table = table[np.isfinite(table).any(1)]
    if not len(table):
        return {**dict.fromkeys(("lse_d", "lse_c", "lse_d_window", "lse_c_window", "offset", "dist_at_0"), float("nan")),
                "n_windows": 0.0}
    keep = np.isfinite(table).any(0)  # offsets with at least one window inside the clip
    offsets, table = offsets[keep], table[:, keep]
    curve = np.nanmean(table, axis=0)  # (O,)
    best = int(np.argmin(curve))
    w_min = np.nanmin(table, axis=1)
    w_med = np.nanmedian(table, axis=1)
    return {
        "lse_d": float(curve[best]),
        "lse_c": float(np.median(curve) - curve[best]),
        "lse_d_window": float(w_min.mean()),
        "lse_c_window": float((w_med - w_min).mean()),
        "offset": float(offsets[best]),
        "dist_at_0": float(curve[offsets == 0][0]),
        "n_windows": float(len(table)),
    }


# ----------------------------------------------------------------------------------------------
# Temporal smoothness, silence


def smoothness(frames: np.ndarray, box: Box | None = None, silent: np.ndarray | None = None,
               data_range: float = 255.0) -> dict[str, float]:
    """Frame-to-frame change of a region (default the whole frame; pass ``mouth_box(crop)`` for the
    mouth), in intensity units on a 0-255 scale (values are rescaled by ``255 / data_range``).

    frames: ``(T, H, W, C)``. For each transition t -> t+1, the mean absolute difference over the
    region's pixels and channels; for each t in 1..T-2 the mean absolute second difference
    ``|x[t+1] - 2 x[t] + x[t-1]|`` (acceleration, i.e. jitter). Keys:

    * ``diff``, ``accel`` -- means over all transitions / triples (0 for a static clip).
    * with ``silent`` (bool ``(T,)``, e.g. from :func:`silence_mask`): ``diff_silent`` over the
      transitions whose two frames are both silent, ``accel_silent`` over triples of three silent
      frames (NaN if there are none), and ``n_silent_transitions``. Mouth motion while nobody
      speaks is the jitter failure the paper compares against real video."""
    x = crop_box(np.asarray(frames), box).astype(np.float64) * (255.0 / float(data_range))
    if x.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, C), got shape {np.asarray(frames).shape}")
    d1 = np.abs(np.diff(x, axis=0)).reshape(max(len(x) - 1, 0), -1).mean(1) if len(x) > 1 else np.zeros(0)
    d2 = (np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).reshape(len(x) - 2, -1).mean(1) if len(x) > 2 else np.zeros(0))
    mean = lambda v: float(v.mean()) if len(v) else float("nan")  # noqa: E731
    out = {"diff": mean(d1), "accel": mean(d2)}
    if silent is not None:
        s = np.asarray(silent, bool).ravel()
        if len(s) != len(x):
            raise ValueError(f"silent mask has {len(s)} entries for {len(x)} frames")
        s1 = s[1:] & s[:-1]
        s2 = s[2:] & s[1:-1] & s[:-2]
        out.update(diff_silent=mean(d1[s1]), accel_silent=mean(d2[s2]), n_silent_transitions=float(s1.sum()))
    return out


# ----------------------------------------------------------------------------------------------
# Identity preservation


def identity_preservation(frames: np.ndarray, reference: np.ndarray, crop_size: int | None = None,
                          data_range: float = 255.0, max_db: float | None = None) -> dict[str, float]:
    """How well the generated clip keeps the reference photo's face: PSNR (dB) and SSIM of the
    upper-face box (:func:`upper_face_box`, the half never generated) of every generated frame
    against the same box of the reference crop, averaged over frames.

    frames: ``(T, S, S, C)`` aligned crops; reference: ``(S, S, C)`` the photo's aligned crop;
    crop_size: S (default: read from ``frames``). PSNR of an exact copy is ``inf`` unless
    ``max_db`` caps it (see :func:`psnr`)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    reference = np.asarray(reference)
    s = int(crop_size or frames.shape[1])
    if frames.shape[1:3] != (s, s) or reference.shape[:2] != (s, s):
        raise ValueError(f"expected {s}x{s} crops, got frames {frames.shape} and reference {reference.shape}")
    box = upper_face_box(s)
    up = crop_box(frames, box)
    ref = np.broadcast_to(crop_box(reference, box)[None], up.shape)
    return {"psnr": psnr(up, ref, data_range, max_db), "ssim": ssim(up, ref, data_range)}
