"""H.264 settings for generated videos: encoding time, file size and fidelity, side by side.

Generates N seconds of a talking 1080p photo once (the shipped checkpoint and example speech, as
``generate_speed.py`` makes them), then encodes the same frames with each x264 setting and
prints encode wall and CPU seconds, file size, and PSNR of the decoded video against the frames
it was given: over the whole frame and over the box where the mouth moves (where bits go).

    python benchmarks/encoder_settings.py [--seconds 12] [--crf 18]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "default (media.FAST_X264)": None,
    "ultrafast": {"preset": "ultrafast"},
    "ultrafast + cabac": {"preset": "ultrafast", "x264-params": "cabac=1"},
    "ultrafast + cabac + mbtree, lookahead 5": {"preset": "ultrafast", "x264-params": "cabac=1:rc-lookahead=5:mbtree=1"},
    "ultrafast + cabac + mbtree, lookahead 10": {"preset": "ultrafast", "x264-params": "cabac=1:rc-lookahead=10:mbtree=1"},
    "ultrafast + cabac + mbtree, lookahead 20": {"preset": "ultrafast", "x264-params": "cabac=1:rc-lookahead=20:mbtree=1"},
    "superfast": {"preset": "superfast"},
    "veryfast": {"preset": "veryfast"},
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--crf", type=int, default=18)
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import av
    from generate_speed import make_inputs

    from talkingface import api, media

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        photo, speech = make_inputs(tmp, args.seconds)
        model = api.load_model()
        frames = api.generate(photo, speech, None, model=model, progress=False)
        boxes = [getattr(f, "box", None) for f in frames]
        x0 = min(b[0] for b in boxes if b)
        y0 = min(b[1] for b in boxes if b)
        x1 = max(b[2] for b in boxes if b)
        y1 = max(b[3] for b in boxes if b)
        h, w = frames[0].shape[:2]
        print(f"{len(frames)} frames {w}x{h}, crf {args.crf}, mouth box {x1 - x0}x{y1 - y0}")
        print(f"{'setting':42s} {'wall s':>7s} {'cpu s':>7s} {'MB':>6s} {'PSNR dB':>8s} {'mouth dB':>8s}")
        for name, opts in SETTINGS.items():
            preset = None if opts is None else opts["preset"]
            saved = dict(media.FAST_X264)
            if opts is not None and "x264-params" in opts:  # a variant of the default's form
                media.FAST_X264.clear()
                media.FAST_X264.update(opts)
                preset = None
            try:
                out = tmp / "out.mp4"
                t, c = time.time(), time.process_time()
                media.write_video(out, iter(frames), 25.0, crf=args.crf, preset=preset)
                wall, cpu = time.time() - t, time.process_time() - c
            finally:
                media.FAST_X264.clear()
                media.FAST_X264.update(saved)
            whole, mouth = [], []
            with av.open(str(out)) as c:
                for k, f in enumerate(c.decode(video=0)):
                    img = f.to_ndarray(format="rgb24")
                    whole.append(psnr(img, frames[k]))
                    mouth.append(psnr(img[y0:y1, x0:x1], frames[k][y0:y1, x0:x1]))
            print(f"{name:42s} {wall:7.2f} {cpu:7.2f} {out.stat().st_size / 1e6:6.2f} {np.mean(whole):8.2f} {np.mean(mouth):8.2f}")


if __name__ == "__main__":
    main()
