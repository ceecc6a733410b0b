"""Reading a prepared corpus (the layout written by ``prepare``): one place for training,
evaluation and previews."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TalkingFaceError


@dataclass
class Clip:
    row: dict
    crops: np.ndarray  # (T, S, S, 3) uint8 aligned faces
    audio: np.ndarray  # (N,) float32, 16 kHz
    landmarks: np.ndarray  # (T, 478, 2) crop pixels, NaN where no face was found
    found: np.ndarray  # (T,) bool
    phonemes: np.ndarray  # (T,) int, -1 = unknown
    phones: dict | None = None  # phonetic front end tracks at 100 Hz ("recognised", "aligned"), if prepared


def read_manifest(corpus: str | Path) -> list[dict]:
    path = Path(corpus) / "manifest.jsonl"
    if not path.exists():
        raise TalkingFaceError(f"{corpus}: no manifest.jsonl (run `talkingface prepare` first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_clip(corpus: str | Path, row: dict, fps: float = 25.0) -> Clip:
    import soundfile as sf

    from ..media import read_video

    d = Path(corpus) / "clips" / row["clip"]
    crops, _ = read_video(d / "crops.mp4", fps, sample_rate=None)
    audio, _ = sf.read(d / "audio.wav", dtype="float32")
    meta = np.load(d / "meta.npz")
    t = min(len(crops), len(meta["found"]))  # the encoder keeps every frame; guard anyway
    phones = None
    if (d / "phones.npz").exists():
        with np.load(d / "phones.npz") as z:
            phones = {k: z[k].astype(np.int64) for k in z.files}
    return Clip(row, crops[:t], audio, meta["landmarks"][:t], meta["found"][:t], meta["phonemes"][:t].astype(np.int64),
                phones)


def load_landmarks(corpus: str | Path, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """A clip's (T, 478, 2) crop-pixel landmarks and (T,) found flags, without decoding its video."""
    meta = np.load(Path(corpus) / "clips" / row["clip"] / "meta.npz")
    return meta["landmarks"], meta["found"]
