"""What one user can cost the web UI: `talkingface serve` under hostile-but-legitimate requests.

Starts its own `talkingface serve` on a free loopback port (127.0.0.1 only; nothing else is
contacted), with the default limits, and prints:

- refusals: the time to refuse 2 hours of low-bitrate Opus (made here: 10 s of low noise at 8 kHz
  mono, 6 kb/s, repeated; ~3.4 MB) and a 13000 x 13000 PNG (~0.5 MB), and the server's extra
  memory meanwhile (its RSS sampled every 10 ms, over what it was before);
- face video: the round trip of 2 s of speech over a 60 s face video and over a 3 s one;
- disconnects: three clients leave mid-generation (job.cancel(); a killed client process; a REST
  result stream closed), then the next request's round trip and whether the log has a traceback;
- flood: N honest clients (gradio_client, one request after another) alone, then beside one
  client that posts to /gradio_api/call/generate as fast as it is answered, reusing one upload
  and never reading a result (as the probe in issue 31 did); p50/p95 of the honest round trips
  and how many of the flood's posts were let in.

Bounded: every phase has a count and a time limit, and the whole run stops after --timeout
seconds, server included.

    python benchmarks/serve_load.py [--honest 3] [--requests 4] [--skip-refusals] [--skip-video]
                                    [--skip-disconnects] [--skip-flood] [--timeout 900]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest: the tests' own input makers and REST upload
GRID = ROOT / "tests/data/grid/s1/bbaf2n.mp4"
HOST = "127.0.0.1"  # the only address this script talks to


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`talkingface serve` in a subprocess on loopback, with its log and its memory."""

    def __init__(self, folder: Path, *args: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.log = folder / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "talkingface.cli", "serve", "--host", HOST, "--port", str(self.port), *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        deadline = time.monotonic() + 240
        while self.url.rstrip("/") not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start:\n{self.log.read_text()}")
            time.sleep(0.3)

    def text(self, since: int = 0) -> str:
        return self.log.read_text()[since:]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class PeakMemory:
    """The server's RSS sampled every 10 ms while the block runs: the peak over the start."""

    def __init__(self, server: Server):
        self.server = server

    def __enter__(self):
        self.before = self.peak = self.server.rss_mb()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.extra_mb = self.peak - self.before


def make_inputs(folder: Path) -> dict[str, Path]:
    """A GRID frame as the photo, 2 s and 0.4 s of its speech, 3 s and 60 s face videos, the
    2-hour Opus, the 13000 x 13000 PNG, and 20 s of the example speech (long enough to leave
    mid-job on any CPU: 5 s are made in ~1 s)."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    from conftest import long_opus, uniform_png  # the tests' own generators, so the figures match what they check

    from talkingface.media import read_video, write_video

    frames, audio = read_video(GRID, sample_rate=16000)
    paths = {"photo": folder / "face.png", "speech": folder / "speech-2s.wav", "short": folder / "speech-0.4s.wav",
             "video3": folder / "face-3s.mp4", "video60": folder / "face-60s.mp4", "png": folder / "huge.png",
             "opus": folder / "two-hours.ogg", "speech20": folder / "speech-20s.wav"}
    Image.fromarray(frames[0]).save(paths["photo"])
    sf.write(paths["speech"], audio[8000:40000], 16000)
    sf.write(paths["short"], audio[12000:18400], 16000)
    write_video(paths["video3"], frames)
    write_video(paths["video60"], (frames[k % len(frames)] for k in range(1500)))
    uniform_png(paths["png"], 13000, 13000)
    long_opus(paths["opus"], 7200)
    example, rate = sf.read(ROOT / "examples/speech.wav", dtype="float32")
    sf.write(paths["speech20"], np.tile(example, (4,) + (1,) * (example.ndim - 1)), rate)
    return paths


def round_trip(url: str, face: Path, speech: Path) -> tuple[float, str]:
    """Seconds from submitting to the answer (a video or a refusal), and the status or the error."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    start = time.monotonic()
    try:
        _, status = client.predict(handle_file(str(face)), handle_file(str(speech)), api_name="/generate")
    except Exception as e:  # a refusal: its line is the answer
        status = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return time.monotonic() - start, status


def refusals(server: Server, paths: dict[str, Path]) -> None:
    print("refusals (upload to answer; server memory over its level before)")
    for what, face, speech in [("2-hour Opus (3.4 MB)", paths["photo"], paths["opus"]),
                               ("13000 x 13000 PNG (0.5 MB)", paths["png"], paths["short"])]:
        with PeakMemory(server) as mem:
            seconds, status = round_trip(server.url, face, speech)
        print(f"  {what:28s} {seconds:6.2f} s  +{mem.extra_mb:5.0f} MB  {status[:110]}")


def face_video(server: Server, paths: dict[str, Path]) -> None:
    print("face video, 2 s of speech (round trip, best of 2)")
    for what in ("video3", "video60"):
        best = min(round_trip(server.url, paths[what], paths["speech"]) for _ in range(2))
        print(f"  {paths[what].name:16s} {best[0]:6.2f} s  {best[1][:80]}")


def disconnects(server: Server, paths: dict[str, Path]) -> None:
    import httpx
    from conftest import rest_upload
    from gradio_client import Client, handle_file

    since = len(server.text())
    photo, speech = ROOT / "examples/portrait.jpg", paths["speech20"]  # 20 s at 910 x 1136: time to leave

    def started(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(re.findall(r"generating ", server.text(since))) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into the frames

    # 1. job.cancel()
    job = Client(server.url, verbose=False).submit(handle_file(str(photo)), handle_file(str(speech)), api_name="/generate")
    started(1)
    job.cancel()
    # 2. a client process killed
    code = (f"from gradio_client import Client, handle_file; import time\n"
            f"Client({server.url!r}, verbose=False).submit(handle_file({str(photo)!r}), handle_file({str(speech)!r}), "
            f"api_name='/generate')\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    started(2)
    proc.kill()
    proc.wait()
    # 3. a REST result stream closed
    data = rest_upload(server.url, photo, speech) + [None, 1.0, True, False]
    event = httpx.post(f"{server.url}gradio_api/call/generate", json={"data": data}, timeout=30).json()["event_id"]
    try:
        with httpx.stream("GET", f"{server.url}gradio_api/call/generate/{event}",
                          timeout=httpx.Timeout(30, read=1.5)) as r:
            for _ in r.iter_lines():
                pass
    except httpx.ReadTimeout:
        pass
    deadline = time.monotonic() + 30
    while server.text(since).count("cancelled: the client went away") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = server.text(since)
    seconds, status = round_trip(server.url, photo, ROOT / "examples/speech.wav")
    print(f"disconnects: {text.count('generating ')} started, {text.count('cancelled: the client went away')} cancelled, "
          f"{len(re.findall(r'wrote .*portrait-talking', text))} written, traceback in the log: {'Traceback' in text}; "
          f"next request {seconds:.2f} s: {status[:60]}")


def flood(server: Server, paths: dict[str, Path], honest: int, requests: int, limit_s: float) -> None:
    import httpx
    from conftest import rest_upload

    def honest_clients() -> list[float]:
        times: list[float] = []
        lock = threading.Lock()

        def one():
            for _ in range(requests):
                seconds, status = round_trip(server.url, paths["photo"], paths["speech"])
                with lock:
                    times.append(seconds if status.startswith("Done") else float("nan"))

        threads = [threading.Thread(target=one, daemon=True) for _ in range(honest)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(limit_s)
        return times

    def summary(times: list[float]) -> str:
        ok = sorted(t for t in times if t == t)
        if not ok:
            return "no answers"
        p95 = ok[min(len(ok) - 1, round(0.95 * (len(ok) - 1)))]
        return f"p50 {statistics.median(ok):5.2f} s  p95 {p95:5.2f} s  ({len(ok)}/{len(times)} answered)"

    alone = honest_clients()
    print(f"flood: {honest} honest clients x {requests} requests (photo + 2 s of speech)")
    print(f"  alone          {summary(alone)}")

    stop = threading.Event()
    posts = {"let in": 0, "refused": 0, "other": 0}

    def flooder():
        data = rest_upload(server.url, paths["photo"], paths["speech"]) + [None, 1.0, True, False]
        with httpx.Client(timeout=30) as h:
            deadline = time.monotonic() + limit_s
            while not stop.is_set() and time.monotonic() < deadline and sum(posts.values()) < 5000:
                r = h.post(f"{server.url}gradio_api/call/generate", json={"data": data})
                posts["let in" if r.status_code == 200 else "refused" if r.status_code == 422 else "other"] += 1
                time.sleep(0.02)

    t = threading.Thread(target=flooder, daemon=True)
    t.start()
    time.sleep(1.0)  # the flood is on before the first honest request
    flooded = honest_clients()
    stop.set()
    t.join()
    print(f"  beside a flood {summary(flooded)}")
    print(f"  the flood's posts: {posts['let in']} let in, {posts['refused']} refused, {posts['other']} other")
    ok_a, ok_f = [x for x in alone if x == x], [x for x in flooded if x == x]
    if ok_a and ok_f:
        print(f"  p50 ratio {statistics.median(ok_f) / statistics.median(ok_a):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--honest", type=int, default=3, help="honest clients in the flood test")
    ap.add_argument("--requests", type=int, default=4, help="requests each honest client makes, one after another")
    ap.add_argument("--phase-seconds", type=float, default=240, help="time limit of each flood phase")
    ap.add_argument("--timeout", type=float, default=900, help="the whole run stops after this")
    for part in ("refusals", "video", "disconnects", "flood"):
        ap.add_argument(f"--skip-{part}", action=argparse.BooleanOptionalAction, default=False)
    args = ap.parse_args()
    if not 1 <= args.honest <= 16 or not 1 <= args.requests <= 20:
        raise SystemExit("--honest 1-16 and --requests 1-20")

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        paths = make_inputs(folder)
        server = Server(folder)
        timer = threading.Timer(args.timeout, lambda: (server.stop(), os._exit(124)))
        timer.daemon = True
        timer.start()
        try:
            print(f"server: {server.url} (default limits), CPU: {os.cpu_count()} cores")
            if not args.skip_refusals:
                refusals(server, paths)
            if not args.skip_video:
                face_video(server, paths)
            if not args.skip_disconnects:
                disconnects(server, paths)
            if not args.skip_flood:
                flood(server, paths, args.honest, args.requests, args.phase_seconds)
            text = server.text()
            print(f"server log: {'a traceback' if 'Traceback' in text else 'no traceback'}")
        finally:
            timer.cancel()
            server.stop()


if __name__ == "__main__":
    main()
