"""`talkingface prepare SRC OUT`: a folder of talking-head videos -> an aligned, labelled corpus.

Per clip (``OUT/clips/<speaker>/<name>/``):
  crops.mp4   aligned face crops (H.264, crf 16) at 25 fps, ``face.crop_size`` pixels square
  audio.wav   the clip's speech, 16 kHz mono PCM16
  meta.npz    landmarks (T, 478, 2) in crop pixels (NaN where no face was found), found (T,),
              matrices (T, 2, 3) source-frame -> crop transforms, phonemes (T,) (-1 = unknown)
  phones.npz  the phonetic front end's tracks at 100 Hz (``phonetic``): recognised (M,) without a
              transcript, the one training and transcript-free inference use, and aligned (M,) to
              the clip's transcript (all -1 where there is none or it would not align)
  row.json    the clip's manifest row
and for the corpus: ``manifest.jsonl`` (one row per clip, with its split), ``splits.json``,
``failures.jsonl`` and ``config.json``.

Clips are processed by ``workers`` processes; a clip's folder appears only when complete (written
under a temp name, then renamed), so an interrupted run resumes by skipping finished clips. A clip
that fails is logged with a one-line reason and never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import DataConfig, save_config
from ..errors import TalkingFaceError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".flv", ".webm", ".mkv", ".m4v"}
MIN_FACE_FRACTION = 0.8  # below this, a clip's crops are mostly guesses: reject it
SMALL_FACE_IOD_PX = 25.0  # eyes closer than this in the source: the crop is upsampled mush


def find_clips(src: Path) -> list[tuple[str, Path]]:
    """(speaker, video) pairs. Speaker = the clip's parent folder name."""
    clips = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    return [(p.parent.name, p) for p in clips]


def clip_id(speaker: str, video: Path) -> str:
    return f"{speaker}/{video.stem}"


def process_clip(video: Path, speaker: str, out_dir: Path, cfg: DataConfig) -> dict:
    """Prepare one clip into ``out_dir`` (which must not exist yet). Returns its manifest row."""
    import soundfile as sf

    from .. import phonemes
    from ..audio import speech_span
    from ..face import crop_frames, interocular, track_faces, transform_points
    from ..media import read_video, write_video
    from ..transcripts import find_transcript

    frames, audio = read_video(video, cfg.fps, cfg.audio.sample_rate)
    if audio is None:
        raise TalkingFaceError("no audio track")
    n = len(frames)
    if n < 5:
        raise TalkingFaceError(f"only {n} frames")
    track = track_faces(frames, cfg.face)
    frac = float(track.found.mean())
    if frac < MIN_FACE_FRACTION:
        raise TalkingFaceError(f"face found in only {100 * frac:.0f}% of frames")
    crops = crop_frames(frames, track.matrices, cfg.face.crop_size)
    lm_crop = np.stack([transform_points(m, lm) for m, lm in zip(track.matrices, track.landmarks)])

    # Per-frame phonemes, from word timings where they exist, else from the sentence text spread
    # over the speech found by energy.
    source = find_transcript(video)
    if source is None:
        ph = np.full(n, -1, np.int64)
        ph_source, text = "none", ""
    elif source[0] == "align":
        words = phonemes.read_align(source[1])
        ph = phonemes.words_to_frame_phonemes(words, n, cfg.fps)
        ph_source = "align"
        text = " ".join(w for _, _, w in words if w not in ("sil", "sp"))
    else:
        text = str(source[1])
        start, end = speech_span(audio, cfg.audio.sample_rate, cfg.fps)
        ph = phonemes.transcript_to_frame_phonemes(text, n, start, end, cfg.fps)
        ph_source = "text"

    src_iod = interocular(track.landmarks[track.found])
    audio_s = len(audio) / cfg.audio.sample_rate
    flags = []
    if not track.found.all():
        flags.append(f"no_face_in_{int((~track.found).sum())}_frames")
    if track.n_faces > 1:
        flags.append(f"{track.n_faces}_faces_largest_used")
    if float(np.median(src_iod)) < SMALL_FACE_IOD_PX:
        flags.append("small_face")
    if abs(audio_s - n / cfg.fps) > 0.2:
        flags.append("audio_video_length_mismatch")

    tracks = phone_tracks(audio, text if ph_source != "none" else "")

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez_compressed(tmp / "phones.npz", **tracks)
    write_video(tmp / "crops.mp4", crops, cfg.fps, crf=16, preset="medium")
    sf.write(tmp / "audio.wav", audio, cfg.audio.sample_rate, subtype="PCM_16")
    np.savez_compressed(
        tmp / "meta.npz", landmarks=lm_crop.astype(np.float32), found=track.found,
        matrices=track.matrices, phonemes=ph.astype(np.int16),
    )
    hist = phonemes.phoneme_histogram(ph[ph >= 0]) if (ph >= 0).any() else np.zeros(len(phonemes.PHONEMES), int)
    row = {
        "clip": clip_id(speaker, video), "speaker": speaker, "source": str(video), "sentence": text or video.stem,
        "frames": n, "duration_s": round(n / cfg.fps, 3), "audio_s": round(audio_s, 3),
        "face_found": round(frac, 4), "source_iod_px": round(float(np.median(src_iod)), 1),
        "phoneme_source": ph_source, "phoneme_hist": [int(x) for x in hist], "flags": flags,
    }
    (tmp / "row.json").write_text(json.dumps(row) + "\n")
    os.replace(tmp, out_dir)
    return row


def phone_tracks(audio: np.ndarray, text: str) -> dict[str, np.ndarray]:
    """The phonetic front end's two tracks of a clip's 16 kHz speech (see the module docstring)."""
    from .. import phonetic

    rec = phonetic.recognise(audio)
    al = phonetic.align(audio, text) if text else None
    return {"recognised": rec.astype(np.int16),
            "aligned": (al if al is not None else np.full_like(rec, -1)).astype(np.int16)}


def add_phone_tracks(clip_dir: Path, row: dict) -> None:
    """Write ``phones.npz`` into a clip prepared before the phonetic front end existed (atomic)."""
    import soundfile as sf

    audio, _ = sf.read(clip_dir / "audio.wav", dtype="float32")
    text = row["sentence"] if row.get("phoneme_source", "none") != "none" else ""
    tmp = clip_dir / "phones.partial.npz"
    np.savez_compressed(tmp, **phone_tracks(audio, text))
    os.replace(tmp, clip_dir / "phones.npz")


def _add_phones_work(job) -> tuple[str, str | None]:
    clip_dir, row = job
    try:
        add_phone_tracks(clip_dir, row)
        return row["clip"], None
    except Exception as e:  # a clip without phones is read as mel alone; never end the run
        return row["clip"], f"{type(e).__name__}: {e}".splitlines()[0]


def _worker_init() -> None:
    # Two workers on two cores: each must stay single-threaded or they fight for the cores.
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    os.environ.setdefault("GLOG_minloglevel", "2")


def _work(job) -> tuple[str, dict | None, str | None, float]:
    speaker, video, out_dir, cfg = job
    t0 = time.time()
    try:
        row = process_clip(video, speaker, out_dir, cfg)
        return clip_id(speaker, video), row, None, time.time() - t0
    except TalkingFaceError as e:
        reason = str(e)
    except Exception as e:  # a clip's failure must never end the run: record it and go on
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        log.debug("%s", traceback.format_exc())
    shutil.rmtree(out_dir.with_name(out_dir.name + ".partial"), ignore_errors=True)
    return clip_id(speaker, video), None, reason, time.time() - t0


def assign_splits(rows: list[dict], cfg: DataConfig) -> dict[str, str]:
    """Split rule: speakers with few clips are held out whole (speaker-disjoint: validation for
    ``cfg.val_speakers``, else test). The other speakers are split by sentence with a stable hash
    of the sentence text, so the same sentence never lands in two splits."""
    per_speaker = Counter(r["speaker"] for r in rows)
    split = {}
    for r in rows:
        if per_speaker[r["speaker"]] < cfg.min_clips_train_speaker:
            split[r["clip"]] = "val" if r["speaker"] in cfg.val_speakers else "test"
            continue
        h = int(hashlib.sha1(r["sentence"].encode()).hexdigest()[:8], 16) / 2**32
        split[r["clip"]] = "test" if h < cfg.test_fraction else "val" if h < cfg.test_fraction + cfg.val_fraction else "train"
    return split


def prepare(src: str | Path, out: str | Path, cfg: DataConfig = DataConfig(), progress: bool = True) -> dict:
    """Prepare every clip under ``src`` into the corpus ``out``. Returns a summary dict; raises
    TalkingFaceError when MediaPipe is missing or when no clip could be prepared."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise TalkingFaceError(f"{src}: not a folder")
    clips = find_clips(src)
    if not clips:
        raise TalkingFaceError(f"{src}: no video files found")
    from ..face import import_mediapipe

    import_mediapipe()  # missing: one line now, before anything is written, not one failure per clip
    (out / "clips").mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != json.loads(json.dumps(__import__("dataclasses").asdict(cfg))):
        raise TalkingFaceError(f"{out}: holds a corpus prepared with another config; use a new folder")
    save_config(cfg, cfg_path)

    jobs, skipped = [], 0
    for speaker, video in clips:
        d = out / "clips" / clip_id(speaker, video)
        if (d / "row.json").exists():
            skipped += 1
            continue
        jobs.append((speaker, video, d, cfg))
    log.info("%d clips found, %d already prepared, %d to do", len(clips), skipped, len(jobs))

    failures = {}
    t0 = time.time()
    if jobs:
        ctx = mp.get_context("spawn")
        workers = max(1, min(cfg.workers, len(jobs)))
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            it = pool.imap_unordered(_work, jobs)
            for cid, row, reason, _ in tqdm(it, total=len(jobs), desc="prepare", unit="clip", disable=not progress):
                if reason is not None:
                    failures[cid] = reason
                    log.warning("%s: skipped: %s", cid, reason)
    elapsed = time.time() - t0

    rows = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*/*/row.json"))]
    # Clips prepared before the phonetic front end existed get its tracks now (resumable too).
    missing = [(out / "clips" / r["clip"], r) for r in rows if not (out / "clips" / r["clip"] / "phones.npz").exists()]
    if missing:
        log.info("%d clips without phone tracks: adding them", len(missing))
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, min(cfg.workers, len(missing))), initializer=_worker_init) as pool:
            it = pool.imap_unordered(_add_phones_work, missing)
            for cid, reason in tqdm(it, total=len(missing), desc="phones", unit="clip", disable=not progress):
                if reason is not None:
                    log.warning("%s: no phone tracks: %s", cid, reason)
    split = assign_splits(rows, cfg)
    for r in rows:
        r["split"] = split[r["clip"]]
    _write_atomic(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    splits = {s: sorted(c for c, v in split.items() if v == s) for s in ("train", "val", "test")}
    _write_atomic(out / "splits.json", json.dumps(splits, indent=1) + "\n")
    _write_atomic(out / "failures.jsonl", "".join(json.dumps({"clip": c, "reason": r}) + "\n" for c, r in sorted(failures.items())))
    if failures and not rows:
        raise TalkingFaceError(_all_failed(failures, out / "failures.jsonl"))

    summary = {
        "clips_found": len(clips), "prepared_now": len(jobs) - len(failures), "skipped_existing": skipped,
        "failed": len(failures), "failures": failures, "elapsed_s": round(elapsed, 1),
        "clips_per_min": round((len(jobs) / elapsed * 60) if jobs and elapsed > 0 else 0.0, 1),
        "split_counts": {s: len(v) for s, v in splits.items()},
        "speakers": dict(Counter(r["speaker"] for r in rows)),
    }
    return summary


def _all_failed(failures: dict[str, str], log_path: Path) -> str:
    """One line for a run in which every clip failed: the commonest reason, and where the rest are."""
    reason, count = Counter(failures.values()).most_common(1)[0]
    if count > 1:
        why = f"{count} of them: {reason}"
    else:
        clip, reason = min(failures.items())
        why = f"e.g. {clip}: {reason}"
    return f"all {len(failures)} clips failed ({why}); every clip's reason is in {log_path}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
