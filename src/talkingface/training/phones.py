"""Training task ``kind = "phones"``: the phone classifier (models/phone_classifier.py), whose audio
encoder a generator with ``generator.audio_pretrained`` starts from and keeps.

Data: every speech file under ``TrainConfig.voices`` (many speakers, no video, no transcripts) and
the corpus's training clips, cut into the generator's own audio windows (``audio.audio_frame_features``:
the utterance-normalised log-mel, 0.35 s around each 25 fps frame), labelled with the phones the
phonetic front end recognises in them (``phonetic.recognise``, what ``generate`` hears without a
transcript; the corpus's recognised tracks from ``prepare``). A voice file's track is recognised
once and kept in the run folder (``voices-phones.npz``), so a second run over the same folder skips
it. Validation: the voices under a folder named ``*test*`` (speakers never trained on): frame
accuracy of the centre phone against the front end's labels, over speech frames (silence excluded)
and over all frames.

Short (minutes on 2 cores): no checkpoint to resume from; a cut-off run starts again (the
recognised tracks are kept).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..audio import audio_frame_features
from ..config import DataConfig, TrainConfig
from ..errors import TalkingFaceError
from ..media import AUDIO_SUFFIXES, n_frames_for, read_audio
from ..models.phone_classifier import OFFSETS, PhoneClassifier
from ..phonemes import SIL
from ..phonetic import N_PHONES, one_hot, recognise
from .checkpoint import export_model

log = logging.getLogger(__name__)


def voice_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise TalkingFaceError(f"{folder}: no speech files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def recognised_tracks(files: list[Path], cache: Path, progress: bool = False) -> dict[Path, np.ndarray]:
    """{file: its recognised phone track (M,)}, with ``cache`` (an .npz by the files' SHA-1) read and updated."""
    from tqdm import tqdm

    known = dict(np.load(cache)) if cache.exists() else {}
    todo = []
    keys = {}
    for f in files:
        keys[f] = hashlib.sha1(f.read_bytes()).hexdigest()
        if keys[f] not in known:
            todo.append(f)
    for f in tqdm(todo, desc="recognise phones", unit="file", disable=not progress):
        known[keys[f]] = recognise(read_audio(f))
    if todo:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez_compressed(tmp, **known)
        tmp.replace(cache)
    return {f: known[keys[f]] for f in files}


def labelled_windows(windows: torch.Tensor, n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio windows with phone rows (T, n_mels + N_PHONES, steps) -> mel windows (T, n_mels, steps)
    float16 and the phones at ``OFFSETS`` from each window's centre (T, len(OFFSETS)), -1 where the
    track says nothing (past the signal, no phone information)."""
    rows = windows[:, n_mels:].float()  # (T, N_PHONES, steps)
    centre = windows.shape[-1] // 2
    cols = rows[:, :, [centre + o for o in OFFSETS]]  # (T, N_PHONES, len(OFFSETS))
    labels = cols.argmax(1)
    labels[cols.sum(1) == 0] = -1
    return windows[:, :n_mels].half(), labels


def _voice_windows(files, tracks, data_cfg: DataConfig):
    mels, labels = [], []
    for f in files:
        audio = read_audio(f)
        n = n_frames_for(len(audio) / data_cfg.audio.sample_rate, data_cfg.fps)
        w = audio_frame_features(audio, n, data_cfg.fps, data_cfg.audio, one_hot(tracks[f]))
        m, lab = labelled_windows(w, data_cfg.audio.n_mels)
        mels.append(m)
        labels.append(lab)
    return torch.cat(mels), torch.cat(labels)


def accuracy(model: PhoneClassifier, mel: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> dict:
    """Centre-phone frame accuracy against the front end's labels: over all frames and over speech."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(mel[i: i + batch].float())[:, OFFSETS.index(0)].argmax(-1)
                          for i in range(0, len(mel), batch)])
    y = labels[:, OFFSETS.index(0)]
    ok = y >= 0
    speech = ok & (y != SIL)
    return {"acc": (pred[ok] == y[ok]).float().mean().item(),
            "acc_speech": (pred[speech] == y[speech]).float().mean().item()}


def train_phones(cfg: TrainConfig, run, train_clips, data_cfg: DataConfig, progress: bool = True) -> None:
    """Train the phone classifier on ``cfg.voices`` + ``train_clips`` (their windows carry the
    recognised phone rows) and export ``run.dir/phone_classifier.pt``."""
    if not cfg.voices:
        raise TalkingFaceError("kind = 'phones' needs voices: a folder of speech of many speakers")
    files = voice_files(cfg.voices)
    is_val = [any("test" in part for part in f.relative_to(cfg.voices).parent.parts) for f in files]
    val_files = [f for f, v in zip(files, is_val) if v]
    train_files = [f for f, v in zip(files, is_val) if not v]
    cache = run.dir / "voices-phones.npz"
    tracks = recognised_tracks(files, cache, progress)
    mel, lab = _voice_windows(train_files, tracks, data_cfg)
    n_voice = len(mel)
    clip_parts = [labelled_windows(c.mel, data_cfg.audio.n_mels) for c in train_clips]
    if clip_parts:
        mel = torch.cat([mel] + [m for m, _ in clip_parts])
        lab = torch.cat([lab] + [y for _, y in clip_parts])
    val = _voice_windows(val_files, tracks, data_cfg) if val_files else None
    if val is not None:  # every 4th frame: neighbours share most of their window, and validation stays seconds
        val = (val[0][::4], val[1][::4])
    log.info("phones: %d windows of %d voice files and %d of %d corpus clips; %d validation windows of %d files",
             n_voice, len(train_files), len(mel) - n_voice, len(train_clips), len(val[0]) if val else 0, len(val_files))

    torch.manual_seed(cfg.seed)
    model = PhoneClassifier(cfg.generator.audio)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_g)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr_g, total_steps=cfg.steps, pct_start=0.05)
    rng = np.random.default_rng(cfg.seed)
    t0, tl = time.time(), time.time()
    for step in range(cfg.steps):
        model.train()
        idx = torch.from_numpy(rng.integers(0, len(mel), cfg.batch_size))
        logits = model(mel[idx].float())  # (B, len(OFFSETS), N_PHONES)
        loss = F.cross_entropy(logits.reshape(-1, N_PHONES), lab[idx].reshape(-1), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.log_every == 0:
            run.log_metrics(step + 1, "train", {"loss": loss.item(), "sec_per_step": (time.time() - tl) / cfg.log_every})
            tl = time.time()
        if val is not None and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            run.log_metrics(step + 1, "val", accuracy(model, *val))
    meta = {"train_seconds": round(time.time() - t0, 1), "voices": str(cfg.voices), "corpus": cfg.corpus,
            "voice_files": len(train_files), "corpus_clips": len(train_clips)}
    if val is not None:
        meta.update({f"val_{k}": round(v, 4) for k, v in accuracy(model, *val).items()})
    export_model(run.dir / "phone_classifier.pt", "phone_classifier", model, cfg.generator.audio, meta)
    run.plot()
    log.info("exported %s (%s)", run.dir / "phone_classifier.pt", meta)
