"""Latency of the web UI's live mode, measured in the page: `talkingface serve` on a free loopback
port, headless Chromium on the same machine opening /live with its fake microphone playing a speech
file, for ``--seconds`` of speech. The page times each frame from the moment it sent the piece of
speech holding the frame's centre to the moment the frame arrived (the microphone's own capture
delay, before the page gets the samples, is not in it; the browser shares the CPU with the server).

    python benchmarks/live_browser.py [--face PHOTO] [--audio SPEECH] [--seconds 20]

Needs gradio, selenium and Debian's chromium + chromium-driver (``bash setup.sh --dev``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", default=str(ROOT / "examples/portrait.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "examples/speech.wav"))
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()

    import soundfile as sf
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from generate_speed import cpu_model
    from talkingface.media import read_audio

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mic = Path(tmp) / "mic.wav"
        speech = read_audio(a.audio, 48000)
        sf.write(mic, np.resize(speech, int((a.seconds + 10) * 48000)), 48000, subtype="PCM_16")
        log = open(Path(tmp) / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "talkingface.cli", "serve", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={mic}"]:
            opts.add_argument(arg)
        driver = None
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/live", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(f"the server did not start:\n{(Path(tmp) / 'serve.log').read_text()}")
                    time.sleep(0.5)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
            driver.get(url + "/live")
            driver.find_element(By.ID, "photo").send_keys(str(Path(a.face).resolve()))
            driver.find_element(By.ID, "start").click()
            stats = {}
            deadline = time.monotonic() + a.seconds + 30
            while time.monotonic() < deadline:
                stats = driver.execute_script("return liveStats")
                if stats["error"] or stats["samples"] >= a.seconds * max(stats["rate"], 1):
                    break
                time.sleep(1.0)
            driver.find_element(By.ID, "stop").click()
            t = time.monotonic()
            while not (stats := driver.execute_script("return liveStats"))["done"] and time.monotonic() - t < 30:
                time.sleep(0.2)
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(60)
    if stats.get("error"):
        raise SystemExit(f"live session failed: {stats['error']}")
    lat = np.array(stats["latencies"])
    print(f"CPU: {cpu_model()}; headless Chromium and the server on the same machine; photo {Path(a.face).name}; "
          f"{stats['samples'] / stats['rate']:.1f} s of speech at {stats['rate']} Hz in 2048-sample pieces")
    print(f"frames: {stats['total']} (received {stats['frames']}); mouth region moved up to {stats['motion']:.1f}/255")
    print(f"send-to-frame latency in the page (ms): p50 {np.percentile(lat, 50):.0f}, p95 {np.percentile(lat, 95):.0f}, "
          f"max {lat.max():.0f}")
    thirds = np.array_split(lat, 3)
    print("p50 by third of the session (ms): " + ", ".join(f"{np.percentile(t, 50):.0f}" for t in thirds))


if __name__ == "__main__":
    main()
