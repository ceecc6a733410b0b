"""Speed and memory of `talkingface generate` on this machine.

Prints: end-to-end real-time factor (load + detect + generate + paste-back + encode) for 30 s of
speech on a ~1080p photo and for dubbing a 30 s 720p video, model-only frames/s, and peak RSS for a long (default 10 min) speech
clip, measured in a fresh process. Real-time factor = speech duration / wall time (>1 = faster
than real time).

    python benchmarks/generate_speed.py [--checkpoint C] [--precision auto|fp32|bf16] [--long-minutes 10] [--skip-long] [--skip-short]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(tmp: Path, seconds: float) -> tuple[Path, Path]:
    import cv2
    import soundfile as sf

    from talkingface.media import read_audio, read_image

    photo = read_image(ROOT / "examples/portrait.jpg")
    h = 1080
    face = cv2.resize(photo, (int(photo.shape[1] * h / photo.shape[0]), h), interpolation=cv2.INTER_CUBIC)
    canvas = cv2.resize(cv2.GaussianBlur(photo, (0, 0), 15), (1920, 1080))
    x0 = (1920 - face.shape[1]) // 2
    canvas[:, x0: x0 + face.shape[1]] = face
    photo_path = tmp / "photo_1080p.png"
    cv2.imwrite(str(photo_path), canvas[..., ::-1])
    speech = read_audio(ROOT / "examples/speech.wav", 16000)
    reps = int(np.ceil(seconds * 16000 / len(speech)))
    audio = np.tile(speech, reps)[: int(seconds * 16000)]
    audio_path = tmp / f"speech_{int(seconds)}s.wav"
    sf.write(audio_path, audio, 16000)
    return photo_path, audio_path


def make_video(tmp: Path, seconds: float) -> Path:
    """A 1280x720 25 fps talking-head video: the repo's CREMA-D test clip upscaled and looped."""
    import cv2

    from talkingface.media import read_video, write_video

    frames, audio = read_video(ROOT / "tests/data/crema-d/1001/1001_DFA_NEU_XX.mp4")
    frames = [cv2.resize(f, (960, 720), interpolation=cv2.INTER_CUBIC) for f in frames]
    pad = lambda f: cv2.copyMakeBorder(f, 0, 0, 160, 160, cv2.BORDER_REPLICATE)  # noqa: E731
    n = int(seconds * 25)
    seq = [pad(frames[i % len(frames)]) for i in range(n)]
    path = tmp / "video_720p.mp4"
    write_video(path, seq, 25.0, audio=np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="generator arithmetic for the end-to-end cases (fp32: what a CPU without AMX gets)")
    ap.add_argument("--skip-long", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--skip-short", action=argparse.BooleanOptionalAction, default=False,
                    help="skip the 30 s and model-only cases")
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import torch

    from talkingface import api
    from talkingface.audio import frame_windows, log_mel, normalize_utterance
    from talkingface.media import read_audio

    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}, precision: {args.precision}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        photo, speech = make_inputs(tmp, 30.0)
        if not args.skip_short:
            t0 = time.time()
            model = api.load_model(args.checkpoint)
            api.generate(photo, speech, tmp / "out.mp4", model=model, progress=False, precision=args.precision)
            wall = time.time() - t0
            print(f"photo 1920x1080, 30 s speech: {wall:.1f} s wall -> real-time factor {30.0 / wall:.2f}x")
            video = make_video(tmp, 30.0)
            t0 = time.time()
            api.generate(video, speech, tmp / "dub.mp4", model=model, progress=False, precision=args.precision)
            wall = time.time() - t0
            print(f"video 1280x720 25 fps dubbed with 30 s speech: {wall:.1f} s wall -> real-time factor {30.0 / wall:.2f}x")

            mel = normalize_utterance(log_mel(read_audio(speech, 16000)))
            g = model.generator
            from talkingface.inference import compute_dtype, crop_to_tensor

            dtype = compute_dtype("auto")
            print(f"precision auto on this CPU: {'bfloat16' if dtype else 'float32'}")
            enc = g.encode_reference(crop_to_tensor(np.zeros((128, 128, 3), np.uint8)), torch.full((1, 69, 2), 0.5))
            for name, dt in [("float32", None)] + ([("bfloat16", dtype)] if dtype else []):
                with torch.no_grad(), torch.autocast("cpu", dtype=dt or torch.bfloat16, enabled=dt is not None):
                    g(frame_windows(mel, 50)[None], enc)  # warm-up
                    t0 = time.time()
                    state, n = None, 0
                    for s in range(0, 500, 50):
                        out = g(frame_windows(mel, 50, first=s)[None], enc, state=state, crops=False)
                        state, n = out["state"], n + 50
                    print(f"model only, {name}: {n / (time.time() - t0):.0f} frames/s (chunks of 50)")

            if dtype is not None:  # what bf16 changes in the output, against float32
                clip = make_inputs(tmp, 4.0)
                a = api.generate(*clip, None, model=model, progress=False, precision="fp32")
                b = api.generate(*clip, None, model=model, progress=False, precision="auto")
                x0, y0, x1, y1 = a[0].box
                d = np.stack([np.abs(u[y0:y1, x0:x1].astype(np.float64) - v[y0:y1, x0:x1]) for u, v in zip(a, b)])
                print(f"bf16 vs float32 output, mouth box over {len(a)} frames: PSNR {10 * np.log10(255**2 / np.mean(d**2)):.1f} dB, "
                      f"max diff {d.max():.0f}/255, {np.mean(d > 2) * 100:.2f}% of values differ by > 2")

        if not args.skip_long:
            minutes = args.long_minutes
            _, long_speech = make_inputs(tmp, minutes * 60)
            # The child reports its own high-water mark (VmHWM): getrusage(RUSAGE_CHILDREN) would also
            # count the parent's pages the child briefly shares while it is being spawned.
            code = ("import sys; from talkingface import api; "
                    f"api.generate(sys.argv[1], sys.argv[2], sys.argv[3], model=api.load_model({args.checkpoint!r}), progress=False, precision={args.precision!r}); "
                    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
            t0 = time.time()
            r = subprocess.run([sys.executable, "-c", code, str(photo), str(long_speech), str(tmp / "long.mp4")],
                               check=True, capture_output=True, text=True)
            wall = time.time() - t0
            rss = int(r.stdout.strip().splitlines()[-1]) / 1024
            print(f"{minutes:g} min speech on the 1080p photo: peak RSS {rss:.0f} MB, {wall:.0f} s wall "
                  f"(real-time factor {minutes * 60 / wall:.2f}x)")


if __name__ == "__main__":
    main()
