"""Web UI: ``talkingface serve`` starts a Gradio page where a person uploads a photo or a video of a
face, uploads or records speech, presses Generate, watches the progress and gets the mp4.

Two layers:

- ``Service``: plain Python, no Gradio. Checks an upload (size, image or video by content, audio
  length and silence) cheaply before any expensive work (lengths and pixel counts from headers,
  decoding that stops at the limit), runs ``api.generate`` with a model loaded once per
  checkpoint, and keeps each session's output in its own folder under one work folder. A job
  stops when its client is gone (``Cancelled``); a session's folder goes when its page closes,
  but not before the session's last job has ended. Every problem is a ``TalkingFaceError`` whose
  message names the uploaded file, not its temp path.
- ``build_app`` / ``serve``: the Gradio page around it (imported only here, only when serving:
  gradio is the optional ``serve`` extra). Requests wait in Gradio's queue, one generation at a
  time by default, at most ``max_queued_per_client`` waiting or running per client
  (``_Requests``: what Gradio's queue knows, read where Gradio has no public API for it).

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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import api
from .errors import TalkingFaceError
from .face import import_mediapipe
from .media import MAX_PIXELS, TooLarge, is_image, iter_video, n_frames_for, open_image, probe_video, read_audio

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
FPS = 25.0
CHECK_RATE = 16000  # audio checks decode at the generator's own rate
INSTALL_HINT = 'pip install -c constraints.txt -e ".[serve]"'


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 50.0
    max_audio_seconds: float = 120.0  # also how much of a face video is read: the speech's length
    max_queued_per_client: int = 2  # requests of one client waiting or running at a time


class Cancelled(Exception):
    """The job's client went away (disconnected, closed the page, or cancelled): stop quietly."""


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
    """'image' or 'video', decided by the file's content (an upload's name can lie), from its
    header and at most its first frame; pictures and video frames over ``MAX_PIXELS`` are refused
    ("too large: W x H") before any pixel is decoded."""
    path = Path(path)
    name = name or path.name

    def image():
        with open_image(path):
            pass

    def video():
        with contextlib.closing(iter_video(path, max_frames=1)) as frames:
            next(frames)  # a video whose first frame decodes

    for kind, probe in (("image", image), ("video", video)):
        try:
            probe()
            return kind
        except TooLarge as e:
            raise TalkingFaceError(readable(str(e), {str(path): name})) from None
        except TalkingFaceError:
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
    """Length of the speech in seconds; refuses unreadable, empty, too short, silent and too long
    audio. Too long is seen from the header when it says so, else decoding stops at the limit:
    hours of speech cost what ``max_seconds`` of it cost."""
    path = Path(path)
    name = name or path.name
    try:
        speech = read_audio(path, CHECK_RATE, max_seconds)
    except TalkingFaceError as e:
        raise TalkingFaceError(readable(str(e), {str(path): name})) from None
    seconds = len(speech) / CHECK_RATE
    if seconds < 1 / FPS:
        raise TalkingFaceError(f"{name}: the audio is too short ({seconds * 1000:.0f} ms); it needs at least 40 ms")
    if float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) < api.SILENCE_RMS:
        raise TalkingFaceError(f"{name}: the audio is silent")
    return seconds


def readable(message: str, names: dict[str, str], folder: str | Path | None = None) -> str:
    """``message`` with every temp path in ``names`` replaced by the name the user gave the file,
    and any other path inside ``folder`` (the server's work folder) by its file name."""
    for path in sorted(names, key=len, reverse=True):  # longest first: a path may contain another
        message = message.replace(path, names[path])
    if folder is not None:
        message = re.sub(re.escape(str(folder)) + r"[^\s:'\"]*", lambda m: Path(m.group()).name, message)
    return message


def check_flag(value, name: str = "keep_expression") -> bool:
    """API clients can send anything: only a real boolean is one ("no" is not true)."""
    if not isinstance(value, bool):
        raise TalkingFaceError(f"{name} must be true or false, not {value!r}")
    return value


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


class _Job:
    """One request being made: its session, its output folder once made, and how it learns that
    nobody wants it any more (the session's page closed, or ``gone`` says its client left)."""

    def __init__(self, session: str, gone: Callable[[], bool] | None):
        self.session, self.gone = session, gone
        self.stop = threading.Event()
        self.out_dir: Path | None = None

    def check(self) -> None:
        if self.stop.is_set() or (self.gone is not None and self.gone()):
            raise Cancelled


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
        self._jobs: set[_Job] = set()
        self._closed: set[str] = set()  # sessions whose page closed while a job of theirs ran
        self._jobs_lock = threading.Lock()  # the jobs, and the folders they write into

    def checkpoint(self, name: str | None = None) -> str:
        """The name of one of the server's checkpoints (default: the first)."""
        if not name:
            return next(iter(self.checkpoints))
        if not isinstance(name, str) or name not in self.checkpoints:
            raise TalkingFaceError(f"{name}: not one of this server's checkpoints ({', '.join(self.checkpoints)})")
        return name

    def options(self, checkpoint, articulation, keep_expression, still=False) -> tuple[str, float, bool, bool]:
        """The request's options checked (API clients can send anything), before any work:
        the checkpoint's name, the articulation as a float, keep_expression and still real booleans."""
        name = self.checkpoint(checkpoint)
        try:
            articulation = api.check_articulation(articulation)
        except ValueError as e:
            raise TalkingFaceError(str(e)) from None
        return name, articulation, check_flag(keep_expression), check_flag(still, "still")

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
        """The session's page was closed: stop its jobs and remove its outputs, now or, while a
        job of it still runs, when the last one ends (a job never loses the folder it writes into)."""
        if not session:
            return
        folder = self._session(session)
        with self._jobs_lock:
            running = [job for job in self._jobs if job.session == folder.name]
            for job in running:
                job.stop.set()
            if running:
                self._closed.add(folder.name)
                return
        shutil.rmtree(folder, ignore_errors=True)

    def running(self, session: str | None = None) -> int:
        """Jobs running now (of one session, or of all)."""
        with self._jobs_lock:
            return sum(session is None or job.session == self._session(session).name for job in self._jobs)

    @contextlib.contextmanager
    def _job(self, session: str | None, gone: Callable[[], bool] | None):
        job = _Job(self._session(session).name, gone)
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            yield job
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)
                last = job.session in self._closed and not any(j.session == job.session for j in self._jobs)
                if last:
                    self._closed.discard(job.session)
                    shutil.rmtree(self.sessions / job.session, ignore_errors=True)

    def _out_dir(self, job: _Job) -> Path:
        """A new folder of the job's own in its session's folder (made under the lock ``sweep``
        takes, so an empty session folder is never removed between the two)."""
        with self._jobs_lock:
            folder = self.sessions / job.session
            folder.mkdir(parents=True, exist_ok=True)
            job.out_dir = Path(tempfile.mkdtemp(dir=folder))
            return job.out_dir

    def sweep(self, now: float | None = None) -> None:
        """Remove outputs older than ``keep_s`` (Gradio copied them to its cache when it served
        them) and session folders left empty: sessions of API clients never say goodbye. The
        folders of running jobs stay, however old."""
        now = time.time() if now is None else now
        with self._jobs_lock:
            busy = {job.out_dir for job in self._jobs}
            for d in self.sessions.iterdir():
                for request in d.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if request not in busy and now - request.stat().st_mtime > self.keep_s:
                            shutil.rmtree(request, ignore_errors=True)
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty

    def make(self, face: str | Path, audio: str | Path, checkpoint: str | None = None,
             session: str | None = None, on_progress: Callable[[int, int], None] | None = None,
             articulation: float = 1.0, keep_expression: bool = True,
             gone: Callable[[], bool] | None = None, still: bool = False) -> Result:
        """Check the uploads and make the video, in a folder of its own in the session's folder
        (two requests of one session never write the same file). ``articulation``,
        ``keep_expression``, ``still``: as in ``api.generate`` (a photo blinks and moves its head
        unless ``still``). ``gone()``: true once the client no longer
        wants the result; asked between the checks and at every frame, it stops the job with
        ``Cancelled`` (as does the session's page closing), leaving nothing behind."""
        start = time.monotonic()
        face, audio = Path(face), Path(audio)
        name, articulation, keep_expression, still = self.options(checkpoint, articulation, keep_expression, still)
        with self._job(session, gone) as job:
            self.sweep()
            check_size(face, self.limits.max_upload_mb)
            check_size(audio, self.limits.max_upload_mb)
            kind = face_kind(face)
            seconds = check_audio(audio, self.limits.max_audio_seconds)
            job.check()
            model = self.model(name)

            def frames(done, total):
                job.check()
                if on_progress is not None:
                    on_progress(done, total)

            out_dir = self._out_dir(job)
            out = out_dir / f"{_safe_stem(face.name)}-talking.mp4"
            try:
                with tempfile.TemporaryDirectory(dir=self.tmp) as tmp:
                    source = face_input(face, kind, tmp)
                    names = {str(face): face.name, str(audio): audio.name, str(source): face.name}
                    log.info("generating %s + %s (%.1f s) with %s", face.name, audio.name, seconds, name)
                    try:
                        api.generate(source, audio, out, model=model, fps=FPS, progress=False, on_progress=frames,
                                     articulation=articulation, keep_expression=keep_expression, still=still)
                    except TalkingFaceError as e:
                        raise TalkingFaceError(readable(str(e), names, self.work)) from None
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


class _Requests:
    """What Gradio's queue knows about the requests, for two things Gradio has no public API for:
    whether a running request's client is still there, and how many requests a client has
    waiting or running. Read from gradio 6's queue (``Blocks._queue``): ``event_queue_per_concurrency_id``
    (waiting events), ``active_jobs`` (running ones), an event's ``alive`` (false once its
    client's event stream closed) and ``closed`` (its page closed); a request cancelled with
    ``/cancel`` leaves ``active_jobs`` at once, while the thread that runs it goes on.

    A client is its session (the page, or a ``gradio_client.Client``); a request sent without one
    (``/call/generate``) counts for its address. A request is counted from the moment it is
    let in, before Gradio has queued it, so a burst of requests sent at once is refused too: as
    "admitted" until it is seen queued or starts, or for ``ADMITTED_S`` (Gradio queues it
    milliseconds after the validator lets it in; one it then refuses, a full queue, is not seen)."""

    ADMITTED_S = 5.0

    def __init__(self, demo, max_per_client: int):
        self.demo = demo
        self.max = max_per_client
        self._lock = threading.Lock()
        self._admitted: dict[int, tuple[str, float]] = {}  # id(HTTP request) -> (client, when): let in, maybe not queued yet
        self._take_turns(demo._queue)

    def _take_turns(self, queue) -> None:
        """Turns go round the clients instead of first come, first served: before Gradio takes
        the next waiting request (``Queue.get_events``, called in its event loop under its lock,
        where requests are also queued, so nothing else moves the lists meanwhile), the waiting
        requests are ordered by how many of their client's requests run or wait ahead of them
        (a stable sort: arrival order within a rank). A client that keeps its two places full
        then gets one turn in as many as there are clients waiting, not two."""
        get_events = queue.get_events

        def fair_get_events():
            running = Counter(self.owner(e) for e in self._running())
            for waiting in queue.event_queue_per_concurrency_id.values():
                ahead, ranked = running.copy(), []
                for e in waiting.queue:
                    client = self.owner(e)
                    ranked.append((ahead[client], e))
                    ahead[client] += 1
                waiting.queue[:] = [e for _, e in sorted(ranked, key=lambda r: r[0])]
            return get_events()

        queue.get_events = fair_get_events

    def _events(self) -> list:
        queues = list(self.demo._queue.event_queue_per_concurrency_id.values())
        return [e for q in queues for e in list(q.queue)] + self._running()

    def _running(self) -> list:
        return [e for job in list(self.demo._queue.active_jobs) if job for e in job]

    @staticmethod
    def client(session_hash: str | None, event_id: str | None, http) -> str:
        if session_hash and session_hash != event_id:  # an event without a session is given its own id as one
            return f"session {session_hash}"
        return f"address {getattr(getattr(http, 'client', None), 'host', None)}"

    def owner(self, event) -> str:
        """The client of a queued or running Gradio event."""
        return self.client(event.session_hash, event._id, event.request)

    def admit(self, session_hash: str | None, http) -> None:
        """Let one more request of this client in, or refuse it (``TalkingFaceError``) when the
        client has ``max`` requests waiting or running already."""
        client = self.client(session_hash, None, http)
        now = time.monotonic()
        with self._lock:
            events = self._events()
            queued = {id(e.request) for e in events}
            self._admitted = {k: v for k, v in self._admitted.items()
                              if k not in queued and now - v[1] < self.ADMITTED_S}
            n = sum(self.owner(e) == client for e in events)
            n += sum(c == client for c, _ in self._admitted.values())
            if n >= self.max:
                raise TalkingFaceError(f"this client already has {n} request{'s' * (n > 1)} waiting or running, and "
                                       f"the server takes at most {self.max} at a time from one client: wait for one "
                                       "to finish")
            self._admitted[id(http)] = (client, now)

    def started(self, http) -> None:
        """The request of this HTTP request runs: counted as running from now on, not admitted."""
        with self._lock:
            self._admitted.pop(id(http), None)

    def gone(self, event_id: str | None) -> Callable[[], bool]:
        """``gone()``: true once nobody waits for the running request ``event_id`` any more."""
        def gone() -> bool:
            for e in self._running():
                if e._id == event_id:
                    return not e.alive or e.closed
            return True  # cancelled: no longer running, as far as Gradio knows

        return gone if event_id else (lambda: False)


def build_app(service: Service, concurrency: int = 1):
    """The Gradio Blocks page for ``service`` (queued: ``concurrency`` generations at a time).

    A request is checked before it is queued (Gradio's validator): the client's share of the
    queue and the options' types and ranges; the uploads when its turn comes (``Service.make``).
    A failed generation raises ``gr.Error``: the page shows it as a toast (API clients get it as
    the error), and a failure handler writes the same line into the status box."""
    gr = _gradio()
    from gradio.context import LocalContext

    limits = service.limits
    errors: dict[str, str] = {}  # session -> its last error, for the status box

    # The options reach the handlers as sent: the components' own conversion turns a wrong type
    # into an exception without a message (`{"error": null}`), before any handler could say what
    # was wrong. ``Service.options`` checks them instead. (Set on the instances: a subclass of a
    # Gradio component makes Gradio write a .pyi stub beside this file, into the installed package.)
    def as_sent(component):
        component.preprocess = lambda payload: payload
        return component

    def fail(message: str, session: str | None):
        errors[session or ""] = message
        while len(errors) > 256:  # API clients never fetch theirs
            errors.pop(next(iter(errors)))
        raise gr.Error(message, duration=None, print_exception=False)

    def admit(face, audio, checkpoint, articulation, keep_expression, still, request: gr.Request):
        """Gradio's validator, run before a request is queued: one refusal per input that is wrong."""
        checks = [None, None, lambda: service.checkpoint(checkpoint),
                  lambda: api.check_articulation(articulation), lambda: check_flag(keep_expression),
                  lambda: check_flag(still, "still")]
        results = []
        for check in checks:
            try:
                if check is not None:
                    check()
                results.append(gr.validate(True, ""))
            except (TalkingFaceError, ValueError) as e:
                results.append(gr.validate(False, str(e)))
        if all(r["is_valid"] for r in results):
            try:
                requests.admit(request.session_hash, request.request)
            except TalkingFaceError as e:
                results[0] = gr.validate(False, str(e))
        return results

    # gr.Progress() as a default is how Gradio finds the progress bar to feed
    def run(face, audio, checkpoint, articulation, keep_expression, still, request: gr.Request,
            progress=gr.Progress()):  # noqa: B008
        session = getattr(request, "session_hash", None)
        if not face:
            fail("Upload a photo or a video of a face first.", session)
        if not audio:
            fail("Upload or record some speech first.", session)
        requests.started(getattr(request, "request", None))
        gone = requests.gone(LocalContext.event_id.get(None))
        yield None, "Working: checking the uploads, then generating..."
        progress(0, desc="Checking the uploads")

        def frames(done, total):
            progress((done, total), desc="Generating", unit="frames")

        try:
            result = service.make(face, audio, checkpoint, session, frames, articulation, keep_expression, gone, still)
        except Cancelled:
            log.info("cancelled: the client went away")
            return
        except TalkingFaceError as e:
            fail(readable(str(e), {}, service.work), session)
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
                    f"Uploads up to {limits.max_upload_mb:g} MB; speech up to {limits.max_audio_seconds:g} s "
                    f"(of a face video, as much as the speech lasts is used); pictures and video frames up to "
                    f"{MAX_PIXELS / 1e6:g} megapixels; {limits.max_queued_per_client} requests at a time per visitor. "
                    "[**Live**: a photo that talks as you speak into the microphone](/live)")
        with gr.Row():
            with gr.Column():
                face = gr.File(label="Face: a photo or a video", file_types=["image", "video"], type="filepath",
                               elem_id="face")
                audio = gr.Audio(label="Speech: upload a file or record", sources=["upload", "microphone"],
                                 type="filepath", elem_id="speech")
                checkpoint = as_sent(gr.Dropdown(choices, value=choices[0], label="Checkpoint",
                                                 visible=len(choices) > 1, elem_id="checkpoint"))
                articulation = as_sent(gr.Slider(0.0, api.MAX_ARTICULATION, value=1.0, step=0.25, elem_id="articulation",
                                                 label="Articulation: how far lips and jaw move (1 = as predicted; "
                                                       "1.5-2 for a closed or smiling mouth)"))
                keep_expression = gr.Checkbox(True, elem_id="keep-expression",
                                              label="Keep the photo's expression (a smile stays between words)")
                still = gr.Checkbox(False, elem_id="still",
                                    label="Still: only the mouth moves (a photo otherwise blinks and moves its head)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="status")
            with gr.Column():
                video = gr.Video(label="Result", interactive=False, buttons=["download"], height=560, elem_id="result")
        # progress over the video; the status box shows what happened
        event = button.click(run, [face, audio, checkpoint, articulation, keep_expression, still], [video, status],
                             api_name="generate", show_progress_on=video, validator=admit)
        event.failure(failed, None, status, queue=False, api_visibility="private")
        demo.unload(goodbye)
    demo.queue(default_concurrency_limit=concurrency, max_size=32)
    requests = _Requests(demo, limits.max_queued_per_client)
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
    if limits.max_upload_mb <= 0 or limits.max_audio_seconds <= 0 or concurrency < 1 or limits.max_queued_per_client < 1:
        raise TalkingFaceError("--max-upload-mb, --max-audio-seconds, --concurrency and --max-queued-per-client "
                               "must be positive")
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
            from .live_web import LiveEndpoint

            LiveEndpoint(service).add_to(demo.app)  # /live: the face talks as the microphone hears
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("listening on %s: anyone who can reach this machine can use the page (no login)", host)
            url_host = "127.0.0.1" if host == "0.0.0.0" else host
            print(f"talkingface web UI: http://{url_host}:{port}  (live: http://{url_host}:{port}/live; Ctrl-C stops it)",
                  flush=True)
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
