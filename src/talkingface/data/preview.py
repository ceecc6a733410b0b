"""`talkingface sheet CORPUS`: a contact sheet of aligned crops from many clips and speakers,
with the canonical template's eye, nose and mouth points drawn on top, to check at a glance that
every crop puts the face at the same place."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..config import DataConfig, config_from_json
from ..face import LIP_INNER_TOP, MOUTH_LEFT, MOUTH_RIGHT, template
from ..viz import image_grid, save_image
from .corpus import load_clip, read_manifest

MARK_POINTS = [468, 473, 1, LIP_INNER_TOP, MOUTH_LEFT, MOUTH_RIGHT]  # iris centres, nose tip, mouth


def contact_sheet(corpus: str | Path, out: str | Path, n_clips: int = 24, frames_per_clip: int = 3,
                  marks: bool = True) -> dict:
    """Pick clips round-robin over speakers (so every speaker shows), ``frames_per_clip`` frames
    each (start, middle, end), and save the grid as PNG. Returns what was shown."""
    corpus = Path(corpus)
    cfg = config_from_json(DataConfig, corpus / "config.json")
    rows = read_manifest(corpus)
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    picked: list[dict] = []
    queues = [list(v) for _, v in sorted(by_speaker.items())]
    while len(picked) < n_clips and any(queues):
        for q in queues:
            if q and len(picked) < n_clips:
                picked.append(q.pop(len(q) // 2 if len(q) > 2 else 0))
    tpl = template(cfg.face)
    tiles = []
    for r in picked:
        clip = load_clip(corpus, r, cfg.fps)
        t = len(clip.crops)
        for i in np.linspace(0, t - 1, frames_per_clip).round().astype(int):
            im = clip.crops[i].copy()
            if marks:
                for p in MARK_POINTS:
                    x, y = tpl[p]
                    cv2.circle(im, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1, cv2.LINE_AA)
            cv2.putText(im, r["speaker"], (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1, cv2.LINE_AA)
            tiles.append(im)
    save_image(out, image_grid(tiles, cols=frames_per_clip * 4))
    return {"clips": [r["clip"] for r in picked], "speakers": sorted({r["speaker"] for r in picked}), "out": str(out)}
