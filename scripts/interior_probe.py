"""How a generator paints the mouth interior on faces unlike its training speaker's.

Drives each portrait with one unseen speaker's REAL lip motion (CREMA-D 1001, angry: wide-open
mouths), so the lips part far more than speech-predicted motion makes them, and prints the mean
residual colour where the lips have parted (the layered flow's gap map > 0.5), in [-1, 1]. A dark
cavity is about -0.4 (s1's interior); light values mean a pale, pinkish fill. Layered renderers
only (``generator.flow_init = "layered"``).

    python scripts/interior_probe.py src/talkingface/assets/talkingface.pt [--corpus corpora/train]
        [--portraits ../shared/data/portraits] [--clip 1001/1001_DFA_ANG_XX] [--speech WAV]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from talkingface import api
from talkingface.config import DataConfig, config_from_json
from talkingface.data.corpus import read_manifest
from talkingface.data.dataset import first_face, load_clips
from talkingface.inference import crop_to_tensor, load_generator
from talkingface.media import IMAGE_SUFFIXES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--corpus", default="corpora/train")
    ap.add_argument("--portraits", default="../shared/data/portraits")
    ap.add_argument("--clip", default="1001/1001_DFA_ANG_XX", help="corpus clip whose real motion drives the portraits")
    ap.add_argument("--speech", default="../shared/data/speech/LJ001-0002.wav",
                    help="any speech file (the photo is prepared as for generate); the motion is the clip's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = load_generator(args.checkpoint)[0]
    if g.cfg.flow_init != "layered":
        raise SystemExit("error: not a layered renderer (generator.flow_init != 'layered')")
    corpus = Path(args.corpus)
    rows = [r for r in read_manifest(corpus) if r["clip"] == args.clip]
    if not rows:
        raise SystemExit(f"error: clip {args.clip} not in {corpus}")
    clip = load_clips(corpus, rows, config_from_json(DataConfig, corpus / "config.json"))[0]
    ri = first_face(clip)
    off = torch.nan_to_num(clip.points.float() - clip.points[ri].float())[None]  # (1, T, K, 2) real motion
    photos = sorted(p for p in Path(args.portraits).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    print(f"{args.checkpoint}: residual where the lips parted, driven by {args.clip}'s real motion")
    for photo in photos:
        p = api.prepare_inputs(photo, args.speech, g.cfg.crop_size)
        ref, rp = crop_to_tensor(p.ref_crop), torch.from_numpy(p.ref_points)[None].float()
        with torch.no_grad():
            out = g(clip.mel.float()[None], ref, rp, offsets=off)
            gap = g._layered_flow((rp[:, None] + off).flatten(0, 1), off.flatten(0, 1))[1][:, 0] > 0.5  # (T, S/2, S)
        res = out["residual"][0]  # (T, 3, S/2, S)
        rgb = np.array([float(res[:, ch][gap].mean()) for ch in range(3)])
        print(f"  {photo.stem}: {int(gap.sum())} px, mean RGB {np.round(rgb, 2)}, grey {rgb.mean():+.2f}")


if __name__ == "__main__":
    main()
