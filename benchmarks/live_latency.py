"""Latency of a live session (``api.LiveSession``) with speech pushed at real-time pace.

A speech file (looped to ``--minutes``) is cut into ``--chunk-ms`` pieces; piece k is pushed when
its audio would have ended on a live microphone (start + (k + 1) x chunk), or at once when the
session is behind. A frame's latency is the time from the push of the piece that holds its centre
((i + 0.5) / 25 s) to the moment ``push`` returns the frame: the model's look-ahead (the window's
170 ms past the centre plus half an FFT frame) plus the wait for the piece that completes it, plus
the time to make it. Pieces are pushed on time, not the moment the last push returned: a session that
falls behind shows it in its latencies. Prints p50 / p95 / max, frames out per second of wall time
(>= 25 keeps up), and the process's RSS in the first and the last minute (flat memory).

    python benchmarks/live_latency.py [--face PHOTO] [--audio SPEECH] [--minutes 1] [--chunk-ms 40]
                                      [--sample-rate 48000] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from generate_speed import cpu_model  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", default=str(ROOT / "examples/portrait.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "examples/speech.wav"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--chunk-ms", type=float, default=40.0)
    ap.add_argument("--sample-rate", type=int, default=16000, help="rate of the pushed samples (resampled inside)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from talkingface import api
    from talkingface.media import read_audio

    torch.set_num_threads(a.threads)
    model = api.load_model(a.checkpoint)
    speech = read_audio(a.audio, a.sample_rate)
    n = int(a.minutes * 60 * a.sample_rate)
    speech = np.resize(speech, n)  # looped to the length asked for
    step = int(round(a.chunk_ms / 1000 * a.sample_rate))
    chunk_s = step / a.sample_rate
    live = api.LiveSession(a.face, model=model, sample_rate=a.sample_rate)

    fps = live.fps
    latencies, rss = [], []
    start = time.perf_counter()
    next_rss = 0.0
    for k, s in enumerate(range(0, n, step)):
        due = start + (k + 1) * chunk_s  # the piece's audio has ended
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        frames = live.push(speech[s: s + step])
        now = time.perf_counter()
        for i in range(live.frames - len(frames), live.frames):
            held_by = int(((i + 0.5) / fps) // chunk_s)  # the piece holding the frame's centre
            latencies.append(now - (start + (held_by + 1) * chunk_s))
        if now - start >= next_rss:
            rss.append((now - start, rss_mb()))
            next_rss += 10.0
    frames = live.flush()
    wall = time.perf_counter() - start
    total = live.frames
    lat = np.array(latencies) * 1000
    first = [m for t, m in rss if t < 60] or [rss[0][1]]
    last = [m for t, m in rss if t >= wall - 60] or [rss[-1][1]]
    print(f"CPU: {cpu_model()}, {a.threads} threads; photo {Path(a.face).name} ({live.size[0]}x{live.size[1]}), "
          f"{a.minutes:g} min of speech at {a.sample_rate} Hz in {a.chunk_ms:g} ms pieces")
    print(f"frames: {total} (expected {live.frames_expected()}); {total / wall:.1f} frames/s over {wall:.1f} s of wall time "
          f"(speech: {n / a.sample_rate:.1f} s)")
    print(f"push-to-frame latency (ms): p50 {np.percentile(lat, 50):.0f}, p95 {np.percentile(lat, 95):.0f}, "
          f"max {lat.max():.0f} (look-ahead {live.lookahead_s * 1000:.0f} ms of it); {len(frames)} frames at flush")
    print(f"RSS (MB): first minute peak {max(first):.0f}, last minute peak {max(last):.0f}")


if __name__ == "__main__":
    main()
