"""Web UI: ``talkingface serve`` starts a Gradio page where a person uploads a photo or a video of a
face, uploads or records speech, presses Generate, watches the progress and gets the mp4.

Two layers:

- ``Service``: plain Python, no Gradio. Checks an upload (size, image or video by content, audio
  length and silence), runs ``api.generate`` with a model loaded once per checkpoint, and keeps
  each session's output in its own folder under one work folder. Every problem is a
  ``TalkingFaceError`` whose message names the uploaded file, not its temp path.
- ``build_app`` / ``serve``: the Gradio page around it (imported only here, only when serving:
  gradio is the optional ``serve`` extra). Requests wait in Gradio's queue, one generation at a
  time by default.

Files: uploads and Gradio's copies of results live in ``<work>/cache`` (Gradio's temp dir, swept
by ``delete_cache``: files older than an hour go); outputs in ``<work>/sessions/<session>/<request>/``
(removed when the page is closed, or after ``keep_s``); intermediates in a ``TemporaryDirectory``
per request. The whole work folder is removed when the server stops.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations
# (``request: gr.Request``) at run time, and ``gr`` is only imported inside ``build_app``.

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import api
from .errors import TalkingFaceError
from .face import import_mediapipe
from .media import is_image, n_frames_for, probe_video, read_audio

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
FPS = 25.0
CHECK_RATE = 16000  # audio checks decode at the generator's own rate
INSTALL_HINT = 'pip install -c constraints.txt -e ".[serve]"'


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 50.0
    max_audio_seconds: float = 120.0


# ----------------------------------------------------------------------------------------------
# Checks on uploads (pure functions; messages use the name the user knows)


def check_size(path: str | Path, max_mb: float, name: str | None = None) -> int:
    """Size of an upload in bytes; refuses empty files and files over ``max_mb`` MiB."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise TalkingFaceError(f"{name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise TalkingFaceError(f"{name}: the file is empty (0 bytes)")
    if size > max_mb * 2**20:
        raise TalkingFaceError(f"{name}: {size / 2**20:.1f} MB is too large; uploads are limited to {max_mb:g} MB")
    return size


def face_kind(path: str | Path, name: str | None = None) -> str:
    """'image' or 'video', decided by the file's content (an upload's name can lie)."""
    import av
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = name or path.name
    try:
        with Image.open(path):
            return "image"
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        pass
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if c.streams.video:
                next(c.decode(video=0))  # a video whose first frame decodes
                return "video"
    except (av.FFmpegError, OSError, UnicodeDecodeError, StopIteration):
        pass
    raise TalkingFaceError(f"{name}: not an image or a video (it cannot be read as either)")


def face_input(path: str | Path, kind: str, tmp: str | Path) -> Path:
    """The face as ``api.generate`` should see it: ``api`` tells photos from videos by the file
    name, so a file whose name disagrees with its content is linked into ``tmp`` under one that
    agrees (a photo saved as ``.jfif``, a video named ``.jpg``)."""
    path = Path(path)
    if (kind == "image") == is_image(path):
        return path
    link = Path(tmp) / ("face.png" if kind == "image" else "face.video")
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    try:
        link.symlink_to(path.resolve())
    except OSError:
        shutil.copyfile(path, link)
    return link


def check_audio(path: str | Path, max_seconds: float, name: str | None = None) -> float:
    """Length of the speech in seconds; refuses unreadable, empty, too short, silent and too long audio."""
    path = Path(path)
    name = name or path.name
    try:
        speech = read_audio(path, CHECK_RATE)
    except TalkingFaceError as e:
        raise TalkingFaceError(readable(str(e), {str(path): name})) from None
    seconds = len(speech) / CHECK_RATE
    if seconds < 1 / FPS:
        raise TalkingFaceError(f"{name}: the audio is too short ({seconds * 1000:.0f} ms); it needs at least 40 ms")
    if seconds > max_seconds:
        raise TalkingFaceError(f"{name}: the audio is {seconds:.1f} s long; this server takes at most {max_seconds:g} s")
    if float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) < api.SILENCE_RMS:
        raise TalkingFaceError(f"{name}: the audio is silent")
    return seconds


def readable(message: str, names: dict[str, str]) -> str:
    """``message`` with every temp path in ``names`` replaced by the name the user gave the file."""
    for path in sorted(names, key=len, reverse=True):  # longest first: a path may contain another
        message = message.replace(path, names[path])
    return message


def _safe_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(name).stem)[:60] or "face"


# ----------------------------------------------------------------------------------------------
# The service behind the page


@dataclass
class Result:
    video: Path
    frames: int
    seconds: float
    size: tuple[int, int]
    took_s: float
    checkpoint: str

    def status(self) -> str:
        return (f"Done: {self.frames} frames ({self.seconds:.2f} s) at {self.size[0]}x{self.size[1]}, "
                f"made in {self.took_s:.1f} s with {self.checkpoint}.")


class Service:
    """Checks uploads, generates with cached models, and owns the files of every session.

    Checkpoints are offered by name (the file name; numbered where names repeat): clients never
    see or send server paths, and nothing but the server's own checkpoints is ever loaded."""

    def __init__(self, checkpoints: Sequence[str | Path], work: str | Path, limits: Limits = Limits(),
                 device: str = "cpu", keep_s: float = 600.0):
        self.checkpoints: dict[str, Path] = {}
        paths = dict.fromkeys(Path(c).resolve() for c in checkpoints) or [api.default_checkpoint().resolve()]
        for c in paths:
            name, k = c.name, 1
            while name in self.checkpoints:
                k += 1
                name = f"{c.name} ({k})"
            self.checkpoints[name] = c
        self.work = Path(work)
        self.limits = limits
        self.device = device
        self.keep_s = keep_s
        self.sessions = self.work / "sessions"
        self.tmp = self.work / "tmp"
        for d in (self.sessions, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, api.Model] = {}
        self._lock = threading.Lock()

    def checkpoint(self, name: str | None = None) -> str:
        """The name of one of the server's checkpoints (default: the first)."""
        if not name:
            return next(iter(self.checkpoints))
        if name not in self.checkpoints:
            raise TalkingFaceError(f"{name}: not one of this server's checkpoints ({', '.join(self.checkpoints)})")
        return name

    def model(self, name: str | None = None) -> api.Model:
        """The model of one of the server's checkpoints, loaded on first use and kept."""
        name = self.checkpoint(name)
        with self._lock:
            if name not in self._models:
                log.info("loading %s", self.checkpoints[name])
                self._models[name] = api.load_model(self.checkpoints[name], self.device)
            return self._models[name]

    def _session(self, session: str | None) -> Path:
        return self.sessions / (re.sub(r"[^\w-]+", "_", session or "") or "anonymous")

    def forget(self, session: str | None) -> None:
        """Remove a session's outputs (its page was closed)."""
        if session:
            shutil.rmtree(self._session(session), ignore_errors=True)

    def sweep(self, now: float | None = None) -> None:
        """Remove outputs older than ``keep_s`` (Gradio copied them to its cache when it served
        them) and session folders left empty: sessions of API clients never say goodbye."""
        now = time.time() if now is None else now
        for d in self.sessions.iterdir():
            for request in d.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if now - request.stat().st_mtime > self.keep_s:
                        shutil.rmtree(request, ignore_errors=True)
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty

    def make(self, face: str | Path, audio: str | Path, checkpoint: str | None = None,
             session: str | None = None, on_progress: Callable[[int, int], None] | None = None,
             articulation: float = 1.0, keep_expression: bool = True) -> Result:
        """Check the uploads and make the video, in a folder of its own in the session's folder
        (two requests of one session never write the same file). ``articulation``,
        ``keep_expression``: as in ``api.generate``."""
        start = time.monotonic()
        face, audio = Path(face), Path(audio)
        try:
            articulation = api.check_articulation(articulation)
        except ValueError as e:  # API clients can send anything
            raise TalkingFaceError(str(e)) from None
        self.sweep()
        check_size(face, self.limits.max_upload_mb)
        check_size(audio, self.limits.max_upload_mb)
        kind = face_kind(face)
        seconds = check_audio(audio, self.limits.max_audio_seconds)
        name = self.checkpoint(checkpoint)
        model = self.model(name)
        session_dir = self._session(session)
        session_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(dir=session_dir))
        out = out_dir / f"{_safe_stem(face.name)}-talking.mp4"
        try:
            with tempfile.TemporaryDirectory(dir=self.tmp) as tmp:
                source = face_input(face, kind, tmp)
                names = {str(face): face.name, str(audio): audio.name, str(source): face.name}
                log.info("generating %s + %s (%.1f s) with %s", face.name, audio.name, seconds, name)
                try:
                    api.generate(source, audio, out, model=model, fps=FPS, progress=False, on_progress=on_progress,
                                 articulation=articulation, keep_expression=bool(keep_expression))
                except TalkingFaceError as e:
                    raise TalkingFaceError(readable(str(e), names)) from None
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        info = probe_video(out)
        return Result(out, n_frames_for(seconds, FPS), seconds, (info.width, info.height),
                      time.monotonic() - start, name)


# ----------------------------------------------------------------------------------------------
# The Gradio page


def _gradio():
    try:
        import gradio
    except ImportError:
        raise TalkingFaceError(f"the web UI needs gradio, which is not installed: {INSTALL_HINT}") from None
    return gradio


def build_app(service: Service, concurrency: int = 1):
    """The Gradio Blocks page for ``service`` (queued: ``concurrency`` generations at a time).

    A failed generation raises ``gr.Error``: the page shows it as a toast (API clients get it as
    the error), and a failure handler writes the same line into the status box."""
    gr = _gradio()
    limits = service.limits
    errors: dict[str, str] = {}  # session -> its last error, for the status box

    def fail(message: str, session: str | None):
        errors[session or ""] = message
        while len(errors) > 256:  # API clients never fetch theirs
            errors.pop(next(iter(errors)))
        raise gr.Error(message, duration=None, print_exception=False)

    # gr.Progress() as a default is how Gradio finds the progress bar to feed
    def run(face, audio, checkpoint, articulation, keep_expression, request: gr.Request,
            progress=gr.Progress()):  # noqa: B008
        session = getattr(request, "session_hash", None)
        if not face:
            fail("Upload a photo or a video of a face first.", session)
        if not audio:
            fail("Upload or record some speech first.", session)
        yield None, "Working: checking the uploads, then generating..."
        progress(0, desc="Checking the uploads")

        def frames(done, total):
            progress((done, total), desc="Generating", unit="frames")

        try:
            result = service.make(face, audio, checkpoint, session, frames, articulation, keep_expression)
        except TalkingFaceError as e:
            fail(str(e), session)
        except Exception as e:  # a bug: the log gets the traceback, the page one line
            log.exception("generation failed")
            fail(f"internal error ({type(e).__name__}); the server log has the details", session)
        yield str(result.video), result.status()

    def failed(request: gr.Request):
        return "Error: " + errors.pop(request.session_hash or "", "the generation failed")

    def goodbye(request: gr.Request):
        errors.pop(request.session_hash or "", None)
        service.forget(request.session_hash)

    choices = list(service.checkpoints)
    with gr.Blocks(title="talkingface", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("# talkingface\nOne photo (or video) of a face + speech -> a lip-synced talking-face video. "
                    f"Uploads up to {limits.max_upload_mb:g} MB; speech up to {limits.max_audio_seconds:g} s.")
        with gr.Row():
            with gr.Column():
                face = gr.File(label="Face: a photo or a video", file_types=["image", "video"], type="filepath",
                               elem_id="face")
                audio = gr.Audio(label="Speech: upload a file or record", sources=["upload", "microphone"],
                                 type="filepath", elem_id="speech")
                checkpoint = gr.Dropdown(choices, value=choices[0], label="Checkpoint", visible=len(choices) > 1,
                                         elem_id="checkpoint")
                articulation = gr.Slider(0.0, api.MAX_ARTICULATION, value=1.0, step=0.25, elem_id="articulation",
                                         label="Articulation: how far lips and jaw move (1 = as predicted; "
                                               "1.5-2 for a closed or smiling mouth)")
                keep_expression = gr.Checkbox(True, elem_id="keep-expression",
                                              label="Keep the photo's expression (a smile stays between words)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="status")
            with gr.Column():
                video = gr.Video(label="Result", interactive=False, buttons=["download"], height=560, elem_id="result")
        # progress over the video; the status box shows what happened
        event = button.click(run, [face, audio, checkpoint, articulation, keep_expression], [video, status], api_name="generate",
                             show_progress_on=video)
        event.failure(failed, None, status, queue=False, api_visibility="private")
        demo.unload(goodbye)
    demo.queue(default_concurrency_limit=concurrency, max_size=32)
    return demo


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop_on_sigterm() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def serve(checkpoints: Sequence[str | Path] = (), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          limits: Limits = Limits(), concurrency: int = 1, device: str = "cpu") -> int:
    """Run the web UI until Ctrl-C (or SIGTERM); the work folder is removed on the way out."""
    if not 0 < port < 65536:
        raise TalkingFaceError(f"--port {port}: not a port number")
    if limits.max_upload_mb <= 0 or limits.max_audio_seconds <= 0 or concurrency < 1:
        raise TalkingFaceError("--max-upload-mb, --max-audio-seconds and --concurrency must be positive")
    _gradio()  # fail early, before any model is loaded
    import_mediapipe()  # every request needs it: say so now, not in the page
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks, one line per request
    _stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="talkingface-serve-"))
    log.info("work folder %s", work)
    demo = None
    try:
        # Gradio looks its temp dir up when the page is built and again on every upload: while
        # serving, it is the work folder's cache/.
        with _env(GRADIO_TEMP_DIR=str(work / "cache"), GRADIO_ANALYTICS_ENABLED="False"):
            service = Service(checkpoints, work, limits, device)
            for name in service.checkpoints:  # a bad checkpoint fails now, with one line, not in the page
                service.model(name)
            demo = build_app(service, concurrency)
            try:
                demo.launch(server_name=host, server_port=port, max_file_size=int(limits.max_upload_mb * 2**20),
                            prevent_thread_lock=True, quiet=True, ssr_mode=False, show_error=False,
                            allowed_paths=[str(service.sessions)])
            except OSError as e:
                raise TalkingFaceError(f"cannot listen on {host}:{port} ({str(e).splitlines()[0]})") from None
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("listening on %s: anyone who can reach this machine can use the page (no login)", host)
            url_host = "127.0.0.1" if host == "0.0.0.0" else host
            print(f"talkingface web UI: http://{url_host}:{port}  (Ctrl-C stops it)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(0.5)
            print("stopped", flush=True)
            return 0
    finally:
        if demo is not None:
            with contextlib.suppress(Exception):
                demo.close()
        shutil.rmtree(work, ignore_errors=True)
