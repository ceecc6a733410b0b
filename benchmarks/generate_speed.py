"""Speed and memory of `talkingface generate` on this machine.

Prints: end-to-end real-time factor (load + detect + generate + paste-back + encode) for 30 s of
speech on a ~1080p photo and for dubbing a 30 s 720p video, model-only frames/s, and peak RSS for a long (default 10 min) speech
clip, measured in a fresh process. Real-time factor = speech duration / wall time (>1 = faster
than real time).

Absolute figures depend on the CPU, so two same-session references are printed beside them, with
the CPU's model name: a fixed torch workload (a 1024x1024 float32 matmul loop, GFLOP/s), and the
generator of the peer Wav2Lip (its architecture with random weights, `wav2lip_reference.py`) timed
exactly as ours (batches of 50 frames, same threads, float32, inference mode), as a ratio.

    python benchmarks/generate_speed.py [--checkpoint C] [--precision auto|fp32|bf16] [--long-minutes 10] [--skip-long] [--skip-short]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3  # model-only timings: ours and the reference alternate, best round of each


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """A fixed machine-speed reference: float32 (n x n) @ (n x n) in a loop for about ``seconds``."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def ours_frames_per_second(g, mel, enc, dtype=None, batch: int = 50, chunks: int = 10) -> float:
    """Our generator alone: one warm-up chunk, then ``chunks`` chunks of ``batch`` frames carrying
    the recurrent state on, as `generate` runs it."""
    import torch

    from talkingface.audio import frame_windows

    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        g(frame_windows(mel, batch)[None], enc)  # warm-up
        t0 = time.perf_counter()
        state = None
        for s in range(0, batch * chunks, batch):
            state = g(frame_windows(mel, batch, first=s)[None], enc, state=state, crops=False)["state"]
        return batch * chunks / (time.perf_counter() - t0)


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
    from talkingface.audio import log_mel, normalize_utterance
    from talkingface.media import read_audio

    cpu = cpu_model()
    print(f"CPU: {cpu}; torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}, precision: {args.precision}")
    print(f"machine reference: 1024x1024 float32 matmul loop: {matmul_gflops():.0f} GFLOP/s")
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
            # Ours and the Wav2Lip-architecture reference alternate, so a busy moment on the machine
            # does not fall on one of them only; each keeps its best round.
            import wav2lip_reference

            ours, peer = [], []
            for _ in range(ROUNDS):
                ours.append(ours_frames_per_second(g, mel, enc))
                peer.append(wav2lip_reference.frames_per_second(batch=50, chunks=10))
            x, y = max(ours), max(peer)
            print(f"model only, float32: {x:.0f} frames/s (chunks of 50, best of {ROUNDS})")
            if dtype is not None:
                print(f"model only, bfloat16: {ours_frames_per_second(g, mel, enc, dtype):.0f} frames/s (chunks of 50)")
            print(f"ours: {x:.0f} frames/s, Wav2Lip-architecture: {y:.1f} frames/s, ratio {x / y:.1f} on {cpu} "
                  f"(float32, batches of 50 frames, {torch.get_num_threads()} threads, "
                  f"{wav2lip_reference.n_parameters(wav2lip_reference.Wav2LipGenerator()) / 1e6:.1f} M parameters, random weights)")

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
