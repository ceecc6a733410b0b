"""Sheets of the eyes of photos through one blink, as `generate` draws it, and the schedule's
figures over ten minutes of real speech.

    python scripts/blink_sheet.py PHOTO [PHOTO ...] --speech SPEECH -o results/alive

Per photo, one row: the eye region at each frame of a blink of the schedule (closure under each
frame). Prints the schedule's rate, durations and share of blinks at pauses for the speech given
(looped to ten minutes), beside the share of frames that are pauses (what chance would give)."""

import argparse
from pathlib import Path

import cv2
import numpy as np

from talkingface.api import _photo
from talkingface.audio import silence_mask
from talkingface.config import FaceConfig
from talkingface.eyes import EyeLids, blink_schedule, eye_openness
from talkingface.media import read_audio

FPS = 25.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--speech", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default="results/alive")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    speech = read_audio(a.speech)
    n = int(10 * 60 * FPS)
    speaking = ~silence_mask(np.resize(speech, int(n / FPS * 16000)), n)
    closure = blink_schedule(n, FPS, speaking, a.seed)
    on = np.concatenate([[0], (closure > 0).astype(int), [0]])
    starts, ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    ms = (ends - starts) / FPS * 1000
    print(f"schedule over 10 min of {Path(a.speech).name} (looped), seed {a.seed}: {len(starts) / 10:.1f} blinks/min, "
          f"{ms.min():.0f}-{ms.max():.0f} ms (median {np.median(ms):.0f}); {np.mean(~speaking[starts]):.0%} start in "
          f"a pause, where {np.mean(~speaking):.0%} of the frames are pauses")

    s0, s1 = starts[0] - 1, ends[0] + 1
    rows = []
    for photo in a.photos:
        img, lm, *_ = _photo(Path(photo), FaceConfig(), 0)
        lids = EyeLids(lm, img.shape)
        print(f"{Path(photo).name}: eye openness {eye_openness(lm):.2f} ({'blinks' if lids.open else 'closed: no blinks'})")
        x0 = min(e[0] for e in lids.eyes); x1 = max(e[2] for e in lids.eyes)
        y0 = min(e[1] for e in lids.eyes); y1 = max(e[3] for e in lids.eyes)
        pad = (y1 - y0) // 3
        tiles = []
        for f in range(s0, s1 + 1):
            tile = lids.draw(img, float(closure[f]))[max(0, y0 - pad): y1 + pad, max(0, x0 - pad): x1 + pad]
            tile = cv2.resize(tile, (int(tile.shape[1] * 110 / tile.shape[0]), 110), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{closure[f]:.2f}", (4, 104), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    w = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0))) for r in rows], 0)
    cv2.imwrite(str(out / "blink_sheet.jpg"), sheet[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {out / 'blink_sheet.jpg'}: frames {s0}-{s1} of the schedule, one row per photo")


if __name__ == "__main__":
    main()
