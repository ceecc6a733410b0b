"""The web UI (serve.py).

- Upload checks and the ``Service`` behind the page: plain unit tests, no Gradio needed.
- The page itself: ``talkingface serve`` in a subprocess on a free loopback port, driven by headless
  Chromium through Selenium (marked ``browser``; skipped without gradio, selenium, or Debian's
  ``chromium`` + ``chromium-driver``), and by ``gradio_client`` for parallel requests.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from conftest import rest_upload
from talkingface import api
from talkingface.cli import build_parser, main
from talkingface.config import (
    AudioEncoderConfig,
    GeneratorConfig,
    IdentityEncoderConfig,
)
from talkingface.errors import TalkingFaceError
from talkingface.media import is_image, read_audio, read_video, write_video
from talkingface.models.generator import Generator
from talkingface.serve import (
    Cancelled,
    Limits,
    Service,
    _Requests,
    check_audio,
    check_size,
    face_input,
    face_kind,
    readable,
)
from talkingface.training.checkpoint import export_model

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
GRID = DATA / "grid/s1/bbaf2n.mp4"
PORTRAIT = ROOT / "examples/portrait.jpg"
SPEECH = ROOT / "examples/speech.wav"
SR = 16000
TINY_G = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A GRID frame as a photo (360x288), 0.4 s of its speech (10 frames), a short video of it,
    a photo without a face, silence, a text file, and a tiny random generator checkpoint."""
    d = tmp_path_factory.mktemp("serve_assets")
    frames, audio = read_video(GRID, sample_rate=SR)
    Image.fromarray(frames[0]).save(d / "face.png")
    sf.write(d / "speech.wav", audio[12000:18400], SR)
    write_video(d / "clip.mp4", frames[:6])
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((200, 240, 3)) * 255).astype(np.uint8)).save(d / "noise.png")
    sf.write(d / "silence.wav", np.zeros(SR, np.float32), SR)
    (d / "notes.jpg").write_text("this is not a photo\n")
    torch.manual_seed(0)
    export_model(d / "tiny.pt", "generator", Generator(TINY_G), TINY_G, {"note": "random init, for tests"})
    return d


def _copy(src, dst):
    shutil.copyfile(src, dst)
    return Path(dst)


# ----------------------------------------------------------------------------------------------
# Upload checks


def test_check_size(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 3000)
    assert check_size(f, 1) == 3000
    with pytest.raises(TalkingFaceError, match=r"^a\.bin: 0\.0 MB is too large; uploads are limited to 0\.001 MB$"):
        check_size(f, 0.001)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(TalkingFaceError, match=r"^empty\.wav: the file is empty"):
        check_size(tmp_path / "empty.wav", 1)
    with pytest.raises(TalkingFaceError, match=r"^photo\.jpg: no such file"):
        check_size(tmp_path / "gone", 1, name="photo.jpg")


def test_face_kind_goes_by_content(assets, tmp_path):
    assert face_kind(assets / "face.png") == "image"
    assert face_kind(_copy(assets / "face.png", tmp_path / "face.dat")) == "image"  # a photo with a strange name
    assert face_kind(assets / "clip.mp4") == "video"
    assert face_kind(_copy(assets / "clip.mp4", tmp_path / "clip.jpg")) == "video"  # a video named like a photo
    for bad in [assets / "notes.jpg", assets / "speech.wav"]:  # text; audio only
        with pytest.raises(TalkingFaceError, match=rf"^{bad.name}: not an image or a video"):
            face_kind(bad)


def test_face_input_names_the_file_after_its_content(assets, tmp_path):
    assert face_input(assets / "face.png", "image", tmp_path) == assets / "face.png"
    assert face_input(assets / "clip.mp4", "video", tmp_path) == assets / "clip.mp4"
    odd = _copy(assets / "face.png", tmp_path / "face.jfif")
    linked = face_input(odd, "image", tmp_path)
    assert linked.suffix == ".png" and linked.read_bytes() == odd.read_bytes()
    video = _copy(assets / "clip.mp4", tmp_path / "clip.jpg")
    linked = face_input(video, "video", tmp_path)
    assert not is_image(linked) and linked.read_bytes() == video.read_bytes()


def test_check_audio(assets, tmp_path):
    assert check_audio(assets / "speech.wav", 10) == pytest.approx(0.4, abs=0.01)
    cases = {
        "silence.wav": (assets / "silence.wav", 10, r"^silence\.wav: the audio is silent$"),
        "too long": (assets / "speech.wav", 0.25, r"^speech\.wav: the audio is longer than the 0\.25 s accepted$"),
        "far too long": (assets / "speech.wav", 0.1, r"^speech\.wav: the audio is 0\.4 s long; at most 0\.1 s is accepted$"),
        "too short": (_tiny_wav(tmp_path / "blip.wav"), 10, r"^blip\.wav: the audio is too short \(10 ms\)"),
        "text": (assets / "notes.jpg", 10, r"^notes\.jpg: (cannot be read as media|has no audio track)"),
        "video without sound": (assets / "clip.mp4", 10, r"^clip\.mp4: has no audio track$"),
    }
    for case, (path, limit, message) in cases.items():
        with pytest.raises(TalkingFaceError, match=message) as e:
            check_audio(path, limit)
        assert str(path.parent) not in str(e.value), case


def _tiny_wav(path):
    sf.write(path, np.full(160, 0.3, np.float32), SR)  # 10 ms
    return path


def test_readable_replaces_temp_paths():
    names = {"/tmp/x/cache/ab12/photo.jpg": "photo.jpg", "/tmp/x/tmp/q/face.png": "photo.jpg"}
    assert readable("/tmp/x/tmp/q/face.png: no face found in the photo", names) == "photo.jpg: no face found in the photo"
    assert readable("nothing to replace", names) == "nothing to replace"


# ----------------------------------------------------------------------------------------------
# The service behind the page (no Gradio)


@pytest.fixture
def service(assets, tmp_path):
    return Service([assets / "tiny.pt", assets / "tiny.pt", api.default_checkpoint()], tmp_path / "work",
                   Limits(max_upload_mb=1, max_audio_seconds=5))


def test_service_makes_the_video_in_the_session_folder(service, assets):
    assert list(service.checkpoints) == ["tiny.pt", "talkingface.pt"]  # the same file once; names only
    seen = []
    r = service.make(assets / "face.png", assets / "speech.wav", "tiny.pt", "abc", lambda d, t: seen.append((d, t)))
    assert r.video.parent.parent == service.sessions / "abc" and r.video.name == "face-talking.mp4"
    assert r.frames == 10 and r.size == (360, 288) and r.checkpoint == "tiny.pt"
    assert r.status().startswith("Done: 10 frames (0.40 s) at 360x288, made in ")
    assert seen[0] == (0, 10) and seen[-1] == (10, 10) and len(seen) == 11
    with av.open(str(r.video)) as c:
        assert float(c.streams.video[0].average_rate) == 25.0
        assert sum(1 for _ in c.decode(video=0)) == 10
    # a second request of the same session gets a folder of its own; the model is loaded once
    r2 = service.make(assets / "face.png", assets / "speech.wav", None, "abc")
    assert r2.video != r.video and r.video.exists() and r2.checkpoint == "tiny.pt"
    assert len(service._models) == 1
    service.forget("abc")
    assert not (service.sessions / "abc").exists()


def test_service_passes_the_articulation_on(service, assets, monkeypatch):
    seen = {}
    generate = api.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return generate(*args, **kwargs)

    monkeypatch.setattr(api, "generate", spy)
    r = service.make(assets / "face.png", assets / "speech.wav", articulation=2.0, keep_expression=False)
    assert seen["articulation"] == 2.0 and seen["keep_expression"] is False and r.frames == 10
    service.make(assets / "face.png", assets / "speech.wav")
    assert seen["keep_expression"] is True and seen["still"] is False  # the defaults, as in generate
    service.make(assets / "face.png", assets / "speech.wav", still=True)
    assert seen["still"] is True
    with pytest.raises(TalkingFaceError, match="still must be true or false"):
        service.make(assets / "face.png", assets / "speech.wav", still="yes")


def test_service_face_by_content_and_video(service, assets, tmp_path):
    r = service.make(_copy(assets / "face.png", tmp_path / "me.jfif"), assets / "speech.wav")  # a photo named oddly
    assert r.size == (360, 288) and r.video.name == "me-talking.mp4"
    r = service.make(assets / "clip.mp4", assets / "speech.wav")  # a video: dubbed
    assert r.frames == 10 and r.size == (360, 288)
    assert os.listdir(service.tmp) == []  # intermediates gone


@pytest.mark.parametrize("case", ["no face", "not an image", "silent", "too long", "hours long", "too large",
                                  "too many pixels", "checkpoint", "articulation", "keep_expression"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, from its header check
def test_service_errors_are_one_readable_line(service, assets, tmp_path, case, long_opus, huge_png):
    upload = tmp_path / "cache" / "0f3c387bb499"  # where Gradio keeps an upload, under its own name
    upload.mkdir(parents=True)
    face, audio, ckpt = upload / "face.png", upload / "speech.wav", None
    _copy(assets / "face.png", face)
    _copy(assets / "speech.wav", audio)
    if case == "no face":
        face = _copy(assets / "noise.png", upload / "holiday.png")
        expected = "holiday.png: no face found in the photo"
    elif case == "not an image":
        face = _copy(assets / "notes.jpg", upload / "notes.jpg")
        expected = "notes.jpg: not an image or a video (it cannot be read as either)"
    elif case == "silent":
        audio = _copy(assets / "silence.wav", upload / "silence.wav")
        expected = "silence.wav: the audio is silent"
    elif case == "too long":
        sf.write(upload / "long.wav", np.tile(sf.read(assets / "speech.wav")[0], 15), SR)  # 6 s
        audio = upload / "long.wav"
        expected = "long.wav: the audio is longer than the 5 s accepted"
    elif case == "hours long":  # 3.4 MB of Opus, refused from its header: nothing is decoded
        audio = _copy(long_opus(7200), upload / "talk.ogg")
        expected = "talk.ogg: the audio is 7200.0 s long; at most 5 s is accepted"
    elif case == "too many pixels":  # 0.5 MB of PNG, 0.5 GB of pixels: refused from its header
        face = _copy(huge_png, upload / "poster.png")
        expected = "poster.png: too large: 13000 x 13000 (at most 40 megapixels)"
    elif case == "too large":
        face.write_bytes(face.read_bytes() + b"\0" * (1 << 20))
        expected = f"face.png: {face.stat().st_size / 2**20:.1f} MB is too large; uploads are limited to 1 MB"
    elif case == "checkpoint":
        ckpt = "/etc/passwd"
        expected = "/etc/passwd: not one of this server's checkpoints (tiny.pt, talkingface.pt)"
    articulation = "loud" if case == "articulation" else 1.0
    if case == "articulation":
        expected = "articulation must be a number between 0 and 3, not 'loud'"
    keep_expression = "no" if case == "keep_expression" else True  # a string is not a boolean, whatever it says
    if case == "keep_expression":
        expected = "keep_expression must be true or false, not 'no'"
    if case == "hours long":
        service.limits = Limits(max_upload_mb=4, max_audio_seconds=5)  # the upload's size is not what refuses it
    with pytest.raises(TalkingFaceError) as e:
        service.make(face, audio, ckpt, "s1", articulation=articulation, keep_expression=keep_expression)
    assert str(e.value) == expected
    assert str(tmp_path) not in str(e.value) and str(service.work) not in str(e.value)
    assert list(service.sessions.rglob("*.mp4")) == []


def test_service_reads_a_long_face_video_only_as_far_as_the_speech(service, assets, tmp_path, counted):
    """30 s of face video for 0.4 s of speech: the video's decoder hands out the 10 frames the
    speech needs (and the one after), not 750."""
    frames, _ = read_video(GRID, sample_rate=None)
    long = tmp_path / "long.mp4"
    write_video(long, (frames[k % len(frames)] for k in range(750)))
    service.limits = Limits(max_upload_mb=10, max_audio_seconds=5)
    counted.clear()
    r = service.make(long, assets / "speech.wav", session="dub")
    assert r.frames == 10
    reads = [c.decoded for c in counted if c.path.name == "long.mp4"]
    assert reads == [2, 11], reads  # face_kind: the first frame (and the next); dubbing: 10 frames and the next


def test_service_job_stops_when_its_client_is_gone(service, assets):
    seen = []
    with pytest.raises(Cancelled):
        service.make(assets / "face.png", assets / "speech.wav", session="gone", on_progress=lambda d, t: seen.append(d),
                     gone=lambda: len(seen) >= 3)
    assert seen == [0, 1, 2]  # stopped at the next frame
    assert list(service.sessions.rglob("*.mp4")) == [] and service.running() == 0


def test_service_page_closed_while_a_job_writes_keeps_its_folder_until_it_ends(service, assets):
    """The page's goodbye stops the session's job, and the folder it writes into is removed only
    once the job has ended (removing it under the job made it fail with a traceback)."""
    folders = []

    def progress(done, total):
        if done == 2:
            assert service.running("closing") == 1
            service.forget("closing")  # the page is closed (Gradio's unload), in the middle of the job
            folders.extend(service.sessions.glob("closing/*"))
            assert folders and all(f.is_dir() for f in folders)  # still there for the job

    with pytest.raises(Cancelled):
        service.make(assets / "face.png", assets / "speech.wav", session="closing", on_progress=progress)
    assert not (service.sessions / "closing").exists() and service.running() == 0
    # a session without a running job goes at once; one whose job finished keeps nothing either
    r = service.make(assets / "face.png", assets / "speech.wav", session="later")
    service.forget("later")
    assert not r.video.exists()


def test_service_sweep_spares_the_folder_of_a_running_job(service, assets):
    def progress(done, total):
        if done == 5:
            service.sweep(now=time.time() + service.keep_s + 10)  # another request sweeps, long after this one began

    r = service.make(assets / "face.png", assets / "speech.wav", session="slow", on_progress=progress)
    assert r.video.exists()


def test_service_sweep_removes_old_outputs(service, assets):
    r = service.make(assets / "face.png", assets / "speech.wav", session="old")
    service.sweep(now=time.time() + 10)
    assert r.video.exists()
    service.sweep(now=time.time() + service.keep_s + 10)
    assert not (service.sessions / "old").exists()


def test_building_the_page_writes_nothing_into_the_package(service):
    """Gradio writes a .pyi stub beside the source of any subclass of its components: the page
    must not make one (an installed package's folder may be read-only, and is not ours to litter)."""
    pytest.importorskip("gradio")
    from talkingface import serve

    package = Path(serve.__file__).parent
    before = {p.name for p in package.iterdir()}
    demo = serve.build_app(service)
    assert {c.label for c in demo.blocks.values() if getattr(c, "label", None)} >= {"Checkpoint"}
    assert {p.name for p in package.iterdir()} == before


def test_requests_take_turns_round_the_clients():
    """A client with a request running and one waiting goes after every other client's first."""
    def event(session):
        return types.SimpleNamespace(session_hash=session, _id=f"{session}-{time.monotonic_ns()}", request=None)

    flood = [event("flood") for _ in range(3)]
    honest = [event("a"), event("b")]
    taken = []
    waiting = types.SimpleNamespace(queue=[flood[1], flood[2], honest[0], honest[1]])
    queue = types.SimpleNamespace(event_queue_per_concurrency_id={"generate": waiting}, active_jobs=[[flood[0]]],
                                  get_events=lambda: taken.append(waiting.queue.pop(0)))
    _Requests(types.SimpleNamespace(_queue=queue), 2)
    for _ in range(4):
        queue.get_events()
    assert taken == [honest[0], honest[1], flood[1], flood[2]]
    # arrival order among equals: nothing running, one request each
    waiting.queue, queue.active_jobs, taken[:] = [honest[1], flood[1], honest[0]], [None], []
    for _ in range(3):
        queue.get_events()
    assert taken == [honest[1], flood[1], honest[0]]


# ----------------------------------------------------------------------------------------------
# CLI


def test_serve_arguments_and_defaults():
    a = build_parser().parse_args(["serve"])
    assert (a.host, a.port, a.checkpoint, a.max_upload_mb, a.max_audio_seconds, a.concurrency, a.max_queued_per_client) == \
        ("127.0.0.1", 7860, [], 50.0, 120.0, 1, 2)
    a = build_parser().parse_args(["serve", "--checkpoint", "a.pt", "--checkpoint", "b.pt", "--port", "8000"])
    assert a.checkpoint == ["a.pt", "b.pt"] and a.port == 8000


def test_serve_without_gradio_says_how_to_install(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    capfd.readouterr()
    assert main(["serve", "--port", "7999"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ['error: the web UI needs gradio, which is not installed: pip install -c constraints.txt -e ".[serve]"']


def test_serve_without_mediapipe_says_how_to_install(monkeypatch, capfd):
    pytest.importorskip("gradio")  # without it, that is the line (above)
    from talkingface.face import MEDIAPIPE_INSTALL

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    capfd.readouterr()
    assert main(["serve", "--port", "7999"]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [f"error: MediaPipe is not installed: {MEDIAPIPE_INSTALL}"]


def test_package_import_does_not_import_gradio():
    code = "import sys, talkingface, talkingface.api, talkingface.cli, talkingface.serve; print('gradio' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# The running server: gradio_client (parallel requests) and headless Chromium (the page)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    """``talkingface serve`` with the shipped checkpoint (default) and the tiny one, 2 MB uploads."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    logs = tmp_path_factory.mktemp("server")
    port = _free_port()
    cmd = [sys.executable, "-m", "talkingface.cli", "serve", "--port", str(port), "--max-upload-mb", "2",
           "--checkpoint", str(api.default_checkpoint()), "--checkpoint", str(assets / "tiny.pt")]
    with open(logs / "stdout.log", "w") as out, open(logs / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=logs)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:  # up: it printed its address (after the work folder, the models and the launch) and answers
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{(logs / 'stderr.log').read_text()}")
        try:
            if url.rstrip("/") in (logs / "stdout.log").read_text():
                with urllib.request.urlopen(url, timeout=2):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not answer in 180 s:\n{(logs / 'stderr.log').read_text()}")
        time.sleep(0.5)
    work = re.search(r"work folder (\S+)", (logs / "stderr.log").read_text())
    assert work, (logs / "stderr.log").read_text()
    yield types.SimpleNamespace(url=url, proc=proc, logs=logs, work=Path(work.group(1)))
    proc.terminate()  # SIGTERM: the server stops and removes its work folder
    assert proc.wait(60) == 0, (logs / "stderr.log").read_text()
    assert not Path(work.group(1)).exists()
    assert "Traceback" not in (logs / "stderr.log").read_text()


def _decode(path):
    """(frame count, fps, audio codec names)."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        codecs = [s.codec_context.name for s in c.streams.audio]
        n = sum(1 for _ in c.decode(video=0))
    return n, fps, codecs


def _expected_frames(audio):
    info = sf.info(str(audio))
    return info.frames / info.samplerate * 25


def test_server_queues_parallel_requests(server, assets, tmp_path):
    from gradio_client import Client, handle_file

    before = len((server.logs / "stderr.log").read_text())
    clients = [Client(server.url, verbose=False, download_files=str(tmp_path / f"c{k}")) for k in range(2)]
    jobs = [clients[0].submit(handle_file(str(PORTRAIT)), handle_file(str(SPEECH)), "talkingface.pt", 2.0,
                              api_name="/generate"),
            clients[1].submit(handle_file(str(assets / "face.png")), handle_file(str(assets / "speech.wav")), "tiny.pt",
                              api_name="/generate")]  # the articulation left out: its default, 1
    (video_a, status_a), (video_b, status_b) = (j.result(timeout=300) for j in jobs)
    assert status_a.startswith("Done: 128 frames (5.14 s) at 910x1136") and status_a.endswith("with talkingface.pt.")
    assert status_b.startswith("Done: 10 frames (0.40 s) at 360x288") and status_b.endswith("with tiny.pt.")
    for video, audio in [(video_a, SPEECH), (video_b, assets / "speech.wav")]:
        n, fps, codecs = _decode(video)
        assert fps == 25.0 and codecs == ["aac"] and abs(n - _expected_frames(audio)) <= 1
    # queued, one generation at a time: each started after the one before had written its video
    log = [line for line in (server.logs / "stderr.log").read_text()[before:].splitlines()
           if "talkingface.serve: generating" in line or "talkingface.api: wrote" in line]
    assert len(log) == 4 and all(("generating" in line) == (k % 2 == 0) for k, line in enumerate(log)), log


def test_server_api_errors_are_readable(server, assets):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    with pytest.raises(AppError, match=r"^notes\.jpg: not an image or a video \(it cannot be read as either\)$"):
        client.predict(handle_file(str(assets / "notes.jpg")), handle_file(str(assets / "speech.wav")), None,
                       api_name="/generate")


def test_server_api_options_are_typed(server, assets):
    """Options of the wrong type or out of range are refused before the request is queued, each
    with a line saying what was wrong (a string is not a boolean; a word is not a number)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    client = Client(server.url, verbose=False)
    face, speech = handle_file(str(assets / "face.png")), handle_file(str(assets / "speech.wav"))
    cases = [("tiny.pt", 1.0, "no", r"keep_expression: keep_expression must be true or false, not 'no'"),
             ("tiny.pt", "loud", True, r"articulation: articulation must be a number between 0 and 3, not 'loud'"),
             ("tiny.pt", 7, True, r"articulation: articulation must be a number between 0 and 3, not 7"),
             ("/etc/passwd", 1.0, True, r"checkpoint: /etc/passwd: not one of this server's checkpoints")]
    for checkpoint, articulation, keep, message in cases:
        with pytest.raises(ValidationError, match=message) as e:
            client.predict(face, speech, checkpoint, articulation, keep, api_name="/generate")
        assert str(server.work) not in str(e.value)
    video, status = client.predict(face, speech, "tiny.pt", 1.0, False, api_name="/generate")
    assert status.startswith("Done: 10 frames") and str(server.work) not in status
    with pytest.raises(ValidationError, match=r"still: still must be true or false, not 'no'"):
        client.predict(face, speech, "tiny.pt", 1.0, True, "no", api_name="/generate")
    video, status = client.predict(face, speech, "tiny.pt", 1.0, True, True, api_name="/generate")
    assert status.startswith("Done: 10 frames")


def _server_log(server, since: int = 0) -> str:
    return (server.logs / "stderr.log").read_text()[since:]


def _wait_log(server, since: int, pattern: str, count: int = 1, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, text := _server_log(server, since))) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"no {count} x {pattern!r} in the server log:\n{text}")
        time.sleep(0.1)
    return text


def test_server_cancels_the_jobs_of_clients_that_left(server, tmp_path):
    """Three clients leave while their video is being made: one cancels (gradio_client's
    ``job.cancel``), one dies (its process is killed), one closes its result stream (the REST
    API). Each job stops, nothing is written, the log has no traceback, the next request is served.
    The speech is the example's four times over (20 s): a job must outlast the client's going
    away on any CPU (the example alone takes under 3 s on a fast one)."""
    import httpx
    from gradio_client import Client, handle_file

    audio, rate = sf.read(SPEECH, dtype="int16")
    long_speech = tmp_path / "speech-20s.wav"
    sf.write(long_speech, np.tile(audio, 4), rate)
    since = len(_server_log(server))
    args = (handle_file(str(PORTRAIT)), handle_file(str(long_speech)), "talkingface.pt")
    # 1. cancelled
    job = Client(server.url, verbose=False).submit(*args, api_name="/generate")
    _wait_log(server, since, r"generating portrait\.jpg", 1)
    time.sleep(1.0)  # into the frames
    job.cancel()
    _wait_log(server, since, r"cancelled: the client went away", 1, 30)
    # 2. killed
    code = (f"from gradio_client import Client, handle_file; import time\n"
            f"Client({server.url!r}, verbose=False).submit(handle_file({str(PORTRAIT)!r}), handle_file({str(long_speech)!r}), "
            f"'talkingface.pt', api_name='/generate')\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_log(server, since, r"generating portrait\.jpg", 2)
        time.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    _wait_log(server, since, r"cancelled: the client went away", 2, 30)
    # 3. the result stream closed while the frames are made
    face, speech = rest_upload(server.url, PORTRAIT, long_speech)
    event = httpx.post(f"{server.url}gradio_api/call/generate", json={"data": [face, speech, "talkingface.pt", 1.0, True, False]},
                       timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{server.url}gradio_api/call/generate/{event}", timeout=30) as r:
        assert r.status_code == 200
        _wait_log(server, since, r"generating portrait\.jpg", 3)
        time.sleep(1.0)
    # leaving the block closed the stream, its job running
    text = _wait_log(server, since, r"cancelled: the client went away", 3, 30)
    assert "portrait-talking.mp4" not in text and "Traceback" not in text and "generation failed" not in text, text
    # the next request is fine, and nothing of the three is left
    video, status = Client(server.url, verbose=False, download_files=str(tmp_path)).predict(
        handle_file(str(PORTRAIT)), handle_file(str(SPEECH)), "tiny.pt", api_name="/generate")
    assert status.startswith("Done: 128 frames")
    assert list((server.work / "sessions").rglob(".*.mp4")) == [] and list((server.work / "tmp").iterdir()) == []


def test_server_refuses_a_clients_requests_beyond_its_share(server, assets):
    """At most 2 requests of one client wait or run at a time; the rest are refused with a line
    that says why, at once, whether the client has a session (gradio_client) or not (REST, by
    address), while another client's request is served."""
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    share = r"this client already has 2 requests waiting or running, and the server takes at most 2 at a time"
    greedy = Client(server.url, verbose=False)
    args = (handle_file(str(assets / "face.png")), handle_file(str(SPEECH)), "tiny.pt")
    jobs = [greedy.submit(*args, api_name="/generate") for _ in range(4)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=120)[1][:5])
        except ValidationError as e:
            assert re.search(share, str(e)), str(e)
            outcomes.append("refused")
    assert sorted(outcomes) == ["Done:", "Done:", "refused", "refused"], outcomes
    # without a session: counted by address
    face, speech = rest_upload(server.url, assets / "face.png", SPEECH)
    replies = [httpx.post(f"{server.url}gradio_api/call/generate", json={"data": [face, speech, "tiny.pt", 1.0, True, False]},
                          timeout=30) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 422, 422], [r.text for r in replies]
    assert re.search(share, replies[2].json()["detail"][0]["message"])
    honest = Client(server.url, verbose=False).predict(handle_file(str(assets / "face.png")),
                                                       handle_file(str(assets / "speech.wav")), "tiny.pt",
                                                       api_name="/generate")
    assert honest[1].startswith("Done: 10 frames")
    for r in replies[:2]:  # read the two that were let in, to their end
        with httpx.stream("GET", f"{server.url}gradio_api/call/generate/{r.json()['event_id']}", timeout=120) as stream:
            assert "event: complete" in "\n".join(stream.iter_lines())


# -- the page, in headless Chromium


def chromium(*extra: str):
    """Headless Chromium under Selenium with a fake microphone (it beeps, or plays the WAV file
    given with --use-file-for-fake-audio-capture); skips without chromium and its driver."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not binary or not driver_bin:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
              "--mute-audio", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *extra]:
        opts.add_argument(a)
    return webdriver.Chrome(service=DriverService(driver_bin), options=opts)


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _page(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    return By


def _upload(driver, face, audio):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#face input[type=file]").send_keys(str(face))
    driver.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(audio))


# Read the page with JavaScript: one atomic look at a DOM that Gradio keeps re-rendering.
def _status(driver) -> str:
    return driver.execute_script("const t = document.querySelector('#status textarea'); return t ? t.value : '';")


def _toasts(driver) -> str:
    return driver.execute_script("return [...document.querySelectorAll('.toast-body')].map(e => e.innerText).join(' ');")


def _progress(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#result .progress-text, #result .meta-text')].map(e => e.innerText);")


def _video_src(driver) -> str:
    return driver.execute_script("const v = document.querySelector('#result video'); return v ? v.src : '';")


def _wait(driver, until, timeout=180.0, every=0.2):
    """Poll ``until(driver)`` until it is truthy; returns its value and the progress texts seen."""
    seen = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.update(_progress(driver))
        value = until(driver)
        if value:
            return value, seen
        time.sleep(every)
    pytest.fail(f"timed out; status {_status(driver)!r}, toasts {_toasts(driver)!r}")


@pytest.mark.browser
def test_browser_generate(browser, server, tmp_path):
    """Upload the shipped portrait and speech, press Generate, watch the progress, get the video."""
    By = _page(browser, server.url)
    assert browser.find_element(By.CSS_SELECTOR, "#checkpoint").is_displayed()  # two checkpoints: a choice
    _upload(browser, PORTRAIT, SPEECH)
    time.sleep(1)  # the uploads finish
    sessions_before = set((server.work / "sessions").iterdir())
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    src, seen = _wait(browser, lambda d: _video_src(d) or _status(d).startswith("Error"))
    assert isinstance(src, str), _status(browser)
    assert any(re.search(r"\d+/128 frames", t) for t in seen), seen  # per-frame progress reached the page
    assert _status(browser).startswith("Done: 128 frames (5.14 s) at 910x1136")
    # the browser itself decodes and can play it
    js = "const v = document.querySelector('#result video'); return [v.readyState, v.duration, v.videoWidth, v.error];"
    (_, duration, width, error), _ = _wait(browser, lambda d: (r := d.execute_script(js))[0] >= 1 and r, 30)
    assert error is None and width == 910 and abs(duration - 5.14) < 0.1
    # the mp4 the page links to
    out = tmp_path / "result.mp4"
    with urllib.request.urlopen(src, timeout=30) as r:
        out.write_bytes(r.read())
    n, fps, codecs = _decode(out)
    assert fps == 25.0 and codecs == ["aac"] and abs(n - _expected_frames(SPEECH)) <= 1
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "serve.png"))
    shutil.copyfile(tmp_path / "serve.png", "/tmp/serve_screenshot.png")
    assert "Traceback" not in browser.page_source
    # closing the page removes the session's results from the server
    (session,) = set((server.work / "sessions").iterdir()) - sessions_before
    assert list(session.rglob("portrait-talking.mp4"))
    browser.get("about:blank")
    _wait(browser, lambda d: not session.exists(), 30)


@pytest.mark.browser
def test_browser_microphone(browser, server):
    """Speech recorded in the page (Chromium's fake microphone beeps) drives the face."""
    By = _page(browser, server.url)
    browser.find_element(By.CSS_SELECTOR, "#face input[type=file]").send_keys(str(PORTRAIT))
    browser.find_element(By.CSS_SELECTOR, "#speech button[aria-label='Record audio']").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#speech button.record-button"), 10)[0][0].click()
    time.sleep(2)
    browser.find_element(By.CSS_SELECTOR, "#speech button.stop-button").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#speech audio, #speech .waveform-container"), 10)
    time.sleep(1)  # the recording is uploaded
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    status, _ = _wait(browser, lambda d: (s := _status(d)).startswith(("Done", "Error")) and s, 120)
    frames = int(re.match(r"Done: (\d+) frames", status).group(1)) if status.startswith("Done") else 0
    assert 25 <= frames <= 100, status  # about 2 s
    assert _video_src(browser)


@pytest.mark.browser
@pytest.mark.parametrize("case", ["text as .jpg", "no face", "silent audio", "too large"])
def test_browser_bad_upload_shows_a_readable_message(browser, server, assets, tmp_path, case):
    By = _page(browser, server.url)
    face, audio = PORTRAIT, SPEECH
    if case == "text as .jpg":
        face, expected = assets / "notes.jpg", "notes.jpg: not an image or a video (it cannot be read as either)"
    elif case == "no face":
        face, expected = assets / "noise.png", "noise.png: no face found in the photo"
    elif case == "silent audio":
        audio, expected = assets / "silence.wav", "silence.wav: the audio is silent"
    else:  # Gradio refuses the upload itself (the server takes 2 MB); Generate then asks for a face
        face = tmp_path / "huge.jpg"
        face.write_bytes(PORTRAIT.read_bytes() + b"\0" * (3 << 20))
        expected = "Upload a photo or a video of a face first."
    _upload(browser, face, audio)
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    status, _ = _wait(browser, lambda d: (s := _status(d)).startswith("Error") and s, 60)
    assert status == f"Error: {expected}"
    _wait(browser, lambda d: expected in _toasts(d), 10)  # the same line in a toast
    if case == "too large":
        assert 'exceed the maximum allowed size of 2.0 Mb: "huge.jpg"' in _toasts(browser)
    assert "Traceback" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "error.png"))


@pytest.mark.browser
def test_browser_closing_the_page_stops_its_job(browser, server):
    """The page is closed while its video is being made: the job stops (no traceback, nothing
    written) and the session's folder goes once it has; the next page is served as usual."""
    By = _page(browser, server.url)
    _upload(browser, PORTRAIT, SPEECH)
    time.sleep(1)  # the uploads finish
    since = len(_server_log(server))
    sessions_before = set((server.work / "sessions").iterdir())
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait(browser, lambda d: any(re.search(r"[1-9]\d*/128 frames", t) for t in _progress(d)), 120, 0.1)
    (session,) = set((server.work / "sessions").iterdir()) - sessions_before  # its job writes in there
    browser.get("about:blank")
    text = _wait_log(server, since, r"cancelled: the client went away", 1, 30)
    deadline = time.monotonic() + 30
    while session.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session.exists()
    assert "Traceback" not in text and "generation failed" not in text and "portrait-talking.mp4" not in text, text
    By = _page(browser, server.url)
    _upload(browser, PORTRAIT, SPEECH)
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    status, _ = _wait(browser, lambda d: (s := _status(d)).startswith(("Done", "Error")) and s, 180)
    assert status.startswith("Done: 128 frames"), status


@pytest.mark.browser
def test_browser_live_mode_talks_as_the_microphone_speaks(server, tmp_path):
    """/live: a photo, Start, and Chromium's fake microphone playing real speech: frames come back
    while it speaks, the mouth moves, a second page is told a session is running, and Stop brings
    the rest: as many frames in all as the speech sent makes (generate's count)."""
    mic = tmp_path / "mic.wav"
    sf.write(mic, np.tile(read_audio(SPEECH, 48000), 3), 48000, subtype="PCM_16")  # Chromium plays it in a loop
    driver = chromium(f"--use-file-for-fake-audio-capture={mic}")
    try:
        from selenium.webdriver.common.by import By

        since = len(_server_log(server))
        driver.get(server.url + "live")
        driver.find_element(By.ID, "photo").send_keys(str(PORTRAIT))
        driver.find_element(By.ID, "start").click()
        stats, _ = _wait(driver, lambda d: (s := d.execute_script("return liveStats")) and
                         (s["frames"] >= 100 or s["error"]) and s, 60)
        assert not stats["error"] and stats["ready"], stats
        assert stats["motion"] > 2.0, stats["motion"]  # the mouth region moves away from its first frame (0-255 scale)
        busy = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const ws = new WebSocket("ws://" + location.host + "/live/ws");
            ws.onmessage = (ev) => { done(ev.data); ws.close(); };
            ws.onerror = () => done("socket error");""")
        assert "already running" in busy, busy
        driver.find_element(By.ID, "stop").click()
        stats, _ = _wait(driver, lambda d: (s := d.execute_script("return liveStats")) and (s["done"] or s["error"]) and s, 30)
        assert stats["done"] and not stats["error"], stats
        assert stats["total"] == stats["frames"], stats  # every frame the server made arrived
        expected = round(stats["samples"] / stats["rate"] * 25)
        assert abs(stats["total"] - expected) <= 1, (stats["total"], expected)
        lat = sorted(stats["latencies"])
        print(f"live in the browser: {stats['total']} frames, latency p50 {lat[len(lat) // 2]:.0f} ms, "
              f"p95 {lat[int(len(lat) * 0.95)]:.0f} ms")
        text = _wait_log(server, since, rf"live session \d+: {stats['total']} frames", 1, 30)
        assert "Traceback" not in text and "failed" not in text, text
        assert "Traceback" not in driver.page_source
    finally:
        driver.quit()


def test_live_endpoint_protocol_and_errors(service, assets):
    """/live/ws without a browser (Starlette's test client): the frames of 1 s of speech come as
    the photo then 25 box JPEGs and a done message; bad first messages and uploads get one line."""
    pytest.importorskip("starlette")
    import json
    import struct

    import cv2
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from talkingface.live_web import LiveEndpoint

    app = Starlette()
    LiveEndpoint(service).add_to(app)
    client = TestClient(app)
    assert "getUserMedia" in client.get("/live").text

    def session(hello, photo: bytes | None, samples=None, raw: bytes | None = None):
        with client.websocket_connect("/live/ws") as ws:
            ws.send_text(hello)
            if photo is not None:
                ws.send_bytes(photo)
            first = json.loads(ws.receive_text())
            if "error" in first:
                return first, []
            if raw is not None:
                ws.send_bytes(raw)
            else:
                for s in range(0, len(samples), 700):
                    ws.send_bytes(samples[s: s + 700].astype("<f4").tobytes())
                ws.send_text(json.dumps({"end": True}))
            got = []
            while True:
                m = ws.receive()
                if m.get("text"):
                    return first, got + [json.loads(m["text"])]
                got.append(m["bytes"])

    face = (assets / "face.png").read_bytes()
    speech = read_audio(assets / "speech.wav", SR)
    one_s = np.resize(speech, SR)
    first, got = session(json.dumps({"sample_rate": SR, "checkpoint": "tiny.pt"}), face, one_s)
    assert first["ready"] and first["lookahead_ms"] == 186
    x0, y0, x1, y1 = first["box"]
    assert 0 <= x0 < x1 <= first["width"] and 0 <= y0 < y1 <= first["height"]
    *frames, done = got
    assert done == {"done": True, "frames": 25, "limit": False}
    heads = [struct.unpack("<iHH", f[:8]) for f in frames]
    assert heads == [(-1, 0, 0)] + [(i, x0, y0) for i in range(25)]
    base = cv2.imdecode(np.frombuffer(frames[0][8:], np.uint8), cv2.IMREAD_COLOR)
    box = cv2.imdecode(np.frombuffer(frames[1][8:], np.uint8), cv2.IMREAD_COLOR)
    assert base.shape == (first["height"], first["width"], 3) and box.shape == (y1 - y0, x1 - x0, 3)

    hello = json.dumps({"sample_rate": SR})
    for case, photo, message in [("not JSON", None, "must be JSON"),
                                 ("text as a photo", b"this is not a photo\n", "the photo"),
                                 ("no face", (assets / "noise.png").read_bytes(), "the photo: no face found")]:
        first, _ = session("hello" if case == "not JSON" else hello, photo)
        assert message in first["error"] and "/tmp" not in first["error"], (case, first)
    first, got = session(json.dumps({"sample_rate": SR, "articulation": 7}), face)
    assert "articulation" in first["error"]
    first, _ = session(json.dumps({"sample_rate": SR, "still": "yes"}), face)
    assert "still must be true or false" in first["error"]
    still, got = session(json.dumps({"sample_rate": SR, "checkpoint": "tiny.pt", "still": True}), face, one_s)
    sx0, sy0, sx1, sy1 = still["box"]  # only the mouth changes: a box inside the moving head's
    assert x0 <= sx0 and y0 <= sy0 and sx1 <= x1 and sy1 <= y1 and (sx1 - sx0) * (sy1 - sy0) < (x1 - x0) * (y1 - y0)
    assert got[-1]["frames"] == 25
    _, got = session(hello, face, raw=b"12345")  # not float32
    assert "multiple of 4 bytes" in got[-1]["error"]
