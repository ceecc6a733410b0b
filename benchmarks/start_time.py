"""How fast `talkingface generate` starts: wall time of the whole command on a short clip, and
when its first frame is made, each in a fresh process, with where the time before it goes.

    python benchmarks/start_time.py [--face PHOTO] [--seconds 3] [--runs 5]

Each run is a new Python process running the CLI's own ``main`` (``--trace``, below, adds only
timestamps): import of the package and its libraries, model load, reading the speech, finding the
face, then frames. The whole command is also timed as a plain ``talkingface generate`` subprocess,
and beside it the same through ``cli.main`` with the interpreter's usual exit (its teardown with
torch and MediaPipe loaded is what the console script skips).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def trace(argv: list[str]) -> None:
    """In the child: run the CLI with timestamps at each stage (seconds since the parent started
    this process: Python's own start-up counts)."""
    t0 = float(os.environ["START_TIME_T0"])
    marks: dict[str, float] = {}
    import talkingface.api as api

    marks["import talkingface.api"] = time.time() - t0
    wrap = {"load_model": "model loaded", "prepare_inputs": "speech read, face found"}
    for name, label in wrap.items():
        f = getattr(api, name)

        def timed(*a, _f=f, _label=label, **k):
            out = _f(*a, **k)
            marks[_label] = time.time() - t0
            return out

        setattr(api, name, timed)
    frames = api._frames

    def first(*a, **k):
        for i, x in enumerate(frames(*a, **k)):
            if i == 0:
                marks["first frame"] = time.time() - t0
            yield x

    api._frames = first
    from talkingface.cli import main

    rc = main(argv)
    marks["done"] = time.time() - t0
    print(json.dumps({"rc": rc, "marks": marks}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", default=str(ROOT / "examples/portrait.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "examples/speech.wav"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trace", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trace is not None:
        return trace(a.trace)

    import numpy as np
    import soundfile as sf

    from generate_speed import cpu_model
    from talkingface.media import read_audio

    with tempfile.TemporaryDirectory() as tmp:
        speech = Path(tmp) / "speech.wav"
        sf.write(speech, read_audio(a.audio)[: int(a.seconds * 16000)], 16000)
        out = Path(tmp) / "out.mp4"
        argv = ["generate", "--face", a.face, "--audio", str(speech), "-o", str(out), "-q"]
        walls, slow_exit, traces = [], [], []
        # The same command with the interpreter's usual exit (``main`` instead of the console
        # script's ``run``), alternating with it: what skipping the teardown saves, side by side.
        usual = [sys.executable, "-c", "import sys; from talkingface.cli import main; sys.exit(main(sys.argv[1:]))"]
        for _ in range(a.runs):
            for cmd, into in ((["talkingface"], walls), (usual, slow_exit)):
                t = time.perf_counter()
                subprocess.run([*cmd, *argv], check=True, capture_output=True)
                into.append(time.perf_counter() - t)
            env = {**os.environ, "START_TIME_T0": repr(time.time())}
            r = subprocess.run([sys.executable, __file__, "--trace", *argv], check=True, capture_output=True,
                               text=True, env=env)
            traces.append(json.loads(r.stdout.strip().splitlines()[-1])["marks"])
    print(f"CPU: {cpu_model()}; {a.seconds:g} s of speech on {Path(a.face).name}; {a.runs} runs, fresh processes")
    print(f"`talkingface generate` wall: {' / '.join(f'{w:.2f}' for w in walls)} s (median {np.median(walls):.2f})")
    print(f"  the same with the interpreter's usual exit: {' / '.join(f'{w:.2f}' for w in slow_exit)} s "
          f"(median {np.median(slow_exit):.2f})")
    print(f"traced: seconds from the process's start, median of {len(traces)} [each run]")
    for label in traces[0]:
        v = [t[label] for t in traces]
        print(f"  {label:<26} {np.median(v):.2f}  [{' / '.join(f'{x:.2f}' for x in v)}]")


if __name__ == "__main__":
    main()
