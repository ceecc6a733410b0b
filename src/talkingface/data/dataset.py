"""Training samples from a prepared corpus, held in memory (the whole corpus is ~1.5 GB of uint8
crops): windows of consecutive frames with their audio windows, landmarks and phonemes, plus one
reference frame of the same clip as the identity photo.

Augmentation (same draw for a sample's reference and targets, so the task stays consistent):
colour (per-channel gain, brightness, contrast, sometimes grayscale), small similarity jitter and
horizontal flips for appearance/pose independence; for voice independence a mel-axis stretch
(vocal tract length), spectral tilt and EQ, dynamics scaling and band masking.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..audio import audio_frame_features
from ..config import DataConfig
from ..face import LOWER_FACE, SYNC_POINTS, detect_landmarks, mirror_index, mouth_motion
from ..phonetic import n_steps, one_hot
from .corpus import load_clip

log = logging.getLogger(__name__)


@dataclass
class ClipTensors:
    clip: str
    speaker: str
    crops: torch.Tensor  # (T, 3, S, S) uint8
    mel: torch.Tensor  # (T, n_mels, steps) float16, utterance-normalised log-mel windows
    points: torch.Tensor  # (T, K, 2) lower-face landmarks in [0, 1] crop units (NaN: no face)
    found: torch.Tensor  # (T,) bool
    phonemes: torch.Tensor  # (T,) int64, -1 unknown
    motion: torch.Tensor | None = None  # (T, K, 2) face.mouth_motion of landmarks detected on the crops


def load_clips(corpus: str | Path, rows: list[dict], cfg: DataConfig, progress: bool = False,
               motion: bool = False, phones: str = "") -> list[ClipTensors]:
    """``phones``: "recognised" or "aligned" appends that phone track's one-hot rows below the mel
    bands of every audio window (``phonetic``; all zero, "no phonetic information", for a clip
    prepared without tracks or where the transcript would not align); "" (default): mel alone.
    ``motion``: also the mouth motion the landmark sync expert reads, from landmarks detected on
    the aligned crops (``face.detect_landmarks``, ~10 ms a frame), as evaluation measures real and
    generated crops; not from the stored landmarks, which were detected on the full-size source
    frames and differ by ~30% of the motion's spread. ``found`` then also requires that detection."""
    from tqdm import tqdm

    out = []
    for r in tqdm(rows, desc="load clips", unit="clip", disable=not progress):
        c = load_clip(corpus, r, cfg.fps)
        t = len(c.crops)
        rows = None
        if phones:
            if phones not in ("recognised", "aligned"):
                raise ValueError(f"phones must be '', 'recognised' or 'aligned', got {phones!r}")
            track = c.phones[phones] if c.phones else np.full(n_steps(len(c.audio)), -1)
            rows = one_hot(track)
        mel = audio_frame_features(c.audio, t, cfg.fps, cfg.audio, rows).half()
        pts = torch.from_numpy(c.landmarks[:, LOWER_FACE] / cfg.face.crop_size).float()
        found, mo = c.found, None
        if motion:
            m = mouth_motion(detect_landmarks(c.crops))
            found = found & np.isfinite(m).all((1, 2))
            mo = torch.from_numpy(m)
        out.append(ClipTensors(r["clip"], r["speaker"], torch.from_numpy(c.crops).permute(0, 3, 1, 2).contiguous(),
                               mel, pts, torch.from_numpy(found), torch.from_numpy(c.phonemes), mo))
    return out


def first_face(clip: ClipTensors) -> int:
    """The first frame with a detected face: the reference photo of validation and evaluation
    (GRID clips start with a closed mouth)."""
    return int(np.nonzero(clip.found.numpy())[0][0])


def valid_starts(clip: ClipTensors, window: int) -> np.ndarray:
    """Start frames of windows whose every frame has a detected face."""
    f = clip.found.numpy().astype(np.int64)
    if len(f) < window:
        return np.zeros(0, np.int64)
    ok = np.convolve(f, np.ones(window, np.int64), mode="valid") == window
    return np.nonzero(ok)[0]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


class WindowSampler:
    """Random (or fixed, for validation) training windows. ``sample`` returns a dict of batched tensors:
    ref (B, 3, S, S), ref_points (B, K, 2), target (B, T, 3, S, S), points (B, T, K, 2),
    mel (B, T, n_mels, steps), phonemes (B, T); and with ``negatives``: neg_mel (B, T, n_mels, steps),
    audio shifted by >= ``min_shift`` frames or taken from another clip; motion (B, T, K, 2) where the
    clips were loaded with it."""

    def __init__(self, clips: list[ClipTensors], window: int, augment: bool = True, min_shift: int = 3,
                 speed: float = 0.0, voice: str = "full", n_mels: int | None = None):
        self.window = window
        self.n_mels = n_mels  # rows of an audio window that are mel bands (the rest: phone rows); None = all
        self.augment = augment
        self.speed = speed  # speaking-rate perturbation of the audio windows (``augment_batch``)
        self.voice = voice  # "full" or "light" voice augmentation (``augment_batch``)
        self.min_shift = min_shift
        self.clips = [c for c in clips if len(valid_starts(c, window))]
        if not self.clips:
            raise ValueError(f"no clip has {window} consecutive frames with a face")
        self.starts = [valid_starts(c, window) for c in self.clips]
        dropped = len(clips) - len(self.clips)
        if dropped:
            log.info("%d clips shorter than a %d-frame window left out", dropped, window)

    def sample(self, batch: int, rng: np.random.Generator, negatives: bool = False, targets: bool = True) -> dict:
        items = []
        for _ in range(batch):
            ci = int(rng.integers(len(self.clips)))
            c = self.clips[ci]
            s = int(rng.choice(self.starts[ci]))
            ref_i = int(rng.choice(np.nonzero(c.found.numpy())[0]))
            items.append((ci, s, ref_i))
        return self._collate(items, rng, negatives, targets)

    def fixed(self, n: int, seed: int = 0) -> dict:
        """The same n windows every time (validation): spread over clips, deterministic."""
        rng = np.random.default_rng(seed)
        items = []
        for k in range(n):
            ci = k % len(self.clips)
            c = self.clips[ci]
            st = self.starts[ci]
            s = int(st[len(st) // 2])
            ref_i = first_face(c)
            items.append((ci, s, ref_i))
        aug, self.augment = self.augment, False
        try:
            return self._collate(items, rng, negatives=True)
        finally:
            self.augment = aug

    def _collate(self, items, rng, negatives: bool, targets: bool = True) -> dict:
        """``targets=False`` leaves out the target frames (the costly part) for motion-only steps."""
        w = self.window
        ref, ref_pts, tgt, pts, mel, ph, neg, mo = [], [], [], [], [], [], [], []
        for ci, s, ref_i in items:
            c = self.clips[ci]
            ref.append(c.crops[ref_i])
            ref_pts.append(c.points[ref_i])
            if targets:
                tgt.append(c.crops[s: s + w])
            pts.append(c.points[s: s + w])
            mel.append(c.mel[s: s + w])
            ph.append(c.phonemes[s: s + w])
            if c.motion is not None:
                mo.append(c.motion[s: s + w])
            if negatives:
                neg.append(self._negative_mel(ci, s, rng))
        out = {
            "ref": to_float(torch.stack(ref)), "ref_points": torch.stack(ref_pts),
            "points": torch.stack(pts),
            "mel": torch.stack(mel).float(), "phonemes": torch.stack(ph),
        }
        if targets:
            out["target"] = to_float(torch.stack(tgt))
        if negatives:
            out["neg_mel"] = torch.stack(neg).float()
        if mo:
            out["motion"] = torch.stack(mo)
        if self.augment:
            augment_batch(out, rng, self.speed, self.voice, self.n_mels)
        return out

    def _negative_mel(self, ci: int, s: int, rng) -> torch.Tensor:
        w = self.window
        if len(self.clips) > 1 and rng.random() < 0.3:
            cj = int(rng.integers(len(self.clips) - 1))
            cj += cj >= ci
            c = self.clips[cj]
            t0 = int(rng.integers(0, max(1, len(c.mel) - w + 1)))
            return _take(c.mel, t0, w)
        c = self.clips[ci]
        t = len(c.mel)
        shifts = [d for d in range(-t, t) if abs(d) >= self.min_shift and 0 <= s + d and s + d + w <= t]
        if not shifts:
            return c.mel.flip(0)[:w] if t >= w else _take(c.mel, 0, w)
        return _take(c.mel, s + int(rng.choice(shifts)), w)


def _take(mel: torch.Tensor, t0: int, w: int) -> torch.Tensor:
    x = mel[t0: t0 + w]
    if len(x) < w:
        x = torch.cat([x, x[-1:].expand(w - len(x), *x.shape[1:])])
    return x


def warp_windows(m: torch.Tensor, alpha: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
    """Resample audio windows m (N, T, n_mels, steps): the mel axis stretched by alpha (N,) from
    its middle (vocal tract length), and with ``rate`` (N,) the time axis around the window's
    centre frame (> 1: more time in the window, i.e. faster speech; < 1: slower)."""
    nm, st = m.shape[2:]
    ys = torch.linspace(-1, 1, nm)[None, :] * alpha[:, None]  # (N, n_mels)
    xs = torch.linspace(-1, 1, st)[None, None, :]  # (1, 1, steps)
    if rate is not None:
        xs = xs * rate[:, None, None]  # (N, 1, steps)
    grid = torch.stack(torch.broadcast_tensors(xs, ys[:, :, None]), -1)  # (N, n_mels, steps, 2)
    return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)


def augment_batch(b: dict, rng: np.random.Generator, speed: float = 0.0, voice: str = "full",
                  n_mels: int | None = None) -> None:
    """In place. One draw per sample, applied identically to its reference and its targets.
    ``speed`` > 0 also stretches every audio window in time around its centre by a factor in
    [1 / (1 + speed), 1 + speed] (one per sample): speakers talk faster or slower than the
    training speaker. 0 draws no extra random numbers, so older runs replay bit-identically; nor
    does mouth motion, whose draws come last and only in batches that hold it. ``voice`` is
    TrainConfig.augment_voice: "full", or "light" (the first version's: a +-10% mel stretch and the
    band mask only, drawing exactly the random numbers that version drew). Audio-window rows past
    ``n_mels`` (a phone track) get no voice augmentation: only the time stretch of ``speed``."""
    n, t = b["mel"].shape[:2]
    # Colour: gain per channel, brightness, contrast, and 10% grayscale.
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 3, 1, 1))).float()
    bright = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 1, 1, 1))).float()
    contrast = torch.from_numpy(rng.uniform(0.75, 1.25, (n, 1, 1, 1))).float()
    gray = torch.from_numpy(rng.random(n) < 0.1)

    def colour(x, rep):  # x (N*rep, 3, S, S)
        g, br, co, gr = (v.repeat_interleave(rep, 0) for v in (gain, bright, contrast, gray))
        x = (x * g + br) * co
        lum = x.mean(1, keepdim=True).expand_as(x)
        x = torch.where(gr[:, None, None, None], lum, x)
        return x.clamp(-1, 1)

    # Geometry: small rotation/scale/shift and flips, as one affine per sample.
    ang = rng.uniform(-4, 4, n) * math.pi / 180
    sc = rng.uniform(0.95, 1.05, n)
    sh = rng.uniform(-0.03, 0.03, (n, 2))
    flip = rng.random(n) < 0.5
    a = np.zeros((n, 2, 3))  # output -> input sampling map in [-1, 1] coords
    a[:, 0, 0] = np.cos(ang) / sc * np.where(flip, -1, 1)
    a[:, 0, 1] = -np.sin(ang) / sc
    a[:, 1, 0] = np.sin(ang) / sc * np.where(flip, -1, 1)
    a[:, 1, 1] = np.cos(ang) / sc
    a[:, :, 2] = sh
    theta = torch.from_numpy(a).float()

    def geo(x, rep):
        th = theta.repeat_interleave(rep, 0)
        grid = F.affine_grid(th, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def geo_points(p):  # p (N, ..., K, 2) in [0, 1]; forward map = inverse of the sampling map
        full = np.concatenate([a, np.tile([[[0, 0, 1]]], (n, 1, 1))], 1)
        inv = torch.from_numpy(np.linalg.inv(full)[:, :2]).float()  # (N, 2, 3)
        q = p * 2 - 1
        shape = q.shape
        q = q.reshape(n, -1, 2)
        q = q @ inv[:, :, :2].transpose(1, 2) + inv[:, None, :, 2]
        return (q.reshape(shape) + 1) / 2

    b["ref"] = geo(colour(b["ref"], 1), 1)
    if "target" in b:
        s = b["target"].shape[-1]
        b["target"] = geo(colour(b["target"].flatten(0, 1), t), t).view(n, t, 3, s, s)
    b["ref_points"] = geo_points(b["ref_points"])
    b["points"] = geo_points(b["points"])

    # Voice (the training audio is nearly all one man's voice): stretch the mel axis by 0.8..1.25
    # (vocal tract length: other men, women, children), tilt the spectrum and apply a smooth
    # random EQ (microphones, rooms, vocal effort), scale the normalised dynamics (quiet vs
    # shouted speech), and mask one band.
    for key in ("mel", "neg_mel"):
        if key not in b:
            continue
        m = b[key]  # (N, T, n_mels [+ phone rows], steps)
        m, extra = (m, None) if n_mels is None or n_mels >= m.shape[2] else (m[:, :, :n_mels], m[:, :, n_mels:])
        nm, st = m.shape[2:]
        if voice == "light":
            alpha = torch.from_numpy(rng.uniform(0.9, 1.1, n)).float()
        else:
            alpha = torch.from_numpy(np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))).float()
        rate = None
        if speed > 0:
            rate = torch.from_numpy(np.exp(rng.uniform(-np.log1p(speed), np.log1p(speed), n))).float()
        warped = warp_windows(m, alpha, rate)
        if voice != "light":
            tilt = torch.from_numpy(rng.uniform(-1, 1, (n, 1, 1, 1))).float() * torch.linspace(-1, 1, nm)[None, None, :, None]
            knots = torch.from_numpy(rng.normal(0, 0.5, (n, 1, 6))).float()
            eq = F.interpolate(knots, size=nm, mode="linear", align_corners=True)[:, 0][:, None, :, None]
            gain = torch.from_numpy(rng.uniform(0.6, 1.4, (n, 1, 1, 1))).float()
            warped = (warped + tilt + eq) * gain
        lo = rng.integers(0, nm - 8, n)
        for i in range(n):
            warped[i, :, lo[i]: lo[i] + int(rng.integers(0, 8))] = 0.0
        if extra is not None:
            if rate is not None:
                extra = warp_windows(extra, torch.ones(n), rate)
            warped = torch.cat([warped, extra], 2)
        b[key] = warped

    if "motion" in b:
        # Mouth motion is already free of head pose, size and rest shape (face.mouth_motion); what
        # still differs between people is how they move: mirror it with the image's flip, scale its
        # amplitude by 0.7..1.4 (quiet vs broad articulation) and its aspect by 0.85..1.15 (wider or
        # rounder mouths, a head turned or tilted a little).
        m = b["motion"]  # (N, T, K, 2)
        mirrored = m[:, :, torch.from_numpy(mirror_index(SYNC_POINTS))] * torch.tensor([-1.0, 1.0])
        m = torch.where(torch.from_numpy(flip)[:, None, None, None], mirrored, m)
        amp = np.exp(rng.uniform(np.log(0.7), np.log(1.4), n))
        aspect = np.exp(rng.uniform(np.log(0.85), np.log(1.15), n))
        scale = torch.from_numpy(np.stack([amp * aspect, amp / aspect], 1)).float()  # (N, 2): x, y
        b["motion"] = m * scale[:, None, None, :]
