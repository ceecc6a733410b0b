"""Python API.

    from talkingface import api
    model = api.load_model()                       # the shipped checkpoint
    api.generate("photo.jpg", "speech.wav", "out.mp4", model=model)
    for frame in api.stream("photo.jpg", "speech.wav", model=model):
        ...                                        # (H, W, 3) uint8 frames, 25 fps, as they are made
    live = api.LiveSession("photo.jpg", model=model, sample_rate=16000)
    frames = live.push(samples) + live.flush()     # speech as it arrives (``live.py``)

The face is a photo (any size/mode, EXIF orientation honoured; found and aligned once) or a video
(dubbing: the face is tracked with smoothed alignment, frames without a face pass through, the
video plays back and forth to cover the speech). The generator runs over the audio in chunks
carrying its recurrent state, and every frame is pasted back into the full frame (``compose.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .audio import frame_windows, log_mel, loudness, normalize_utterance, quiet_frames, silence_window, with_rows
from .config import AudioConfig, FaceConfig, GeneratorConfig
from .errors import TalkingFaceError
from .face import LOWER_FACE, FaceMesh, alignment_matrix, invert, transform_points, warp_face
from .inference import compute_dtype
from .interior import INNER_IN_LOWER_FACE, InteriorLibrary
from .media import PatchedFrame, check_writable, is_image, iter_video, n_frames_for, read_audio, read_image, write_video
from .phonetic import one_hot, phone_track

log = logging.getLogger(__name__)

MAX_SIDE = 4096  # larger photos are downscaled first: video encoders and memory have limits
SILENCE_RMS = 1e-4
OUTPUT_SAMPLE_RATE = 44100


def default_checkpoint() -> Path:
    return Path(str(resources.files("talkingface.assets").joinpath("talkingface.pt")))


@dataclass
class Model:
    generator: torch.nn.Module
    config: GeneratorConfig
    meta: dict
    device: str = "cpu"


def load_model(checkpoint: str | Path | None = None, device: str = "cpu") -> Model:
    """Load a generator checkpoint (default: the one shipped with the package)."""
    from .inference import load_generator

    path = Path(checkpoint) if checkpoint else default_checkpoint()
    g, cfg, meta = load_generator(path, device)
    return Model(g, cfg, meta, device)


@dataclass
class Prepared:
    """Everything generation needs, worked out once before the first frame is made."""

    ref_crop: np.ndarray  # (S, S, 3) uint8: the aligned reference face the generator animates
    ref_points: np.ndarray  # (K, 2) its lower-face landmarks, crop units
    src_image: np.ndarray  # (H, W, 3) uint8: where the lower face's pixels are taken from
    src_matrix: np.ndarray  # (2, 3) src_image -> crop
    backgrounds: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray | None]]]  # n -> (frame, matrix or None)
    size: tuple[int, int]  # output (W, H)
    n_faces: int
    face_index: int
    mel: torch.Tensor  # (n_mels, M) normalised log-mel of the whole speech
    n_frames: int
    landmarks: np.ndarray  # (478, 2) the reference's face mesh in src_image pixels
    loudness: np.ndarray  # (n_frames,) dB per frame (blinks prefer its pauses, nods follow its rises)
    is_photo: bool
    interior: InteriorLibrary | None = None  # a video's own open mouths (dubbing)


def _even(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[: h // 2 * 2, : w // 2 * 2])  # H.264 needs even sizes


def _photo(face: Path, cfg: FaceConfig, face_index: int):
    image = read_image(face)
    h, w = image.shape[:2]
    if max(h, w) > MAX_SIDE:
        import cv2

        f = MAX_SIDE / max(h, w)
        image = cv2.resize(image, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
        log.info("photo downscaled from %dx%d to %dx%d", w, h, image.shape[1], image.shape[0])
    image = _even(image)
    if min(image.shape[:2]) < 32:
        raise TalkingFaceError(f"{face}: image too small ({w}x{h})")
    with FaceMesh(cfg) as mesh:
        found = mesh.detect(image, index=face_index)
    if found is None:
        raise TalkingFaceError(f"{face}: no face found in the photo")
    m = alignment_matrix(found.landmarks, cfg)

    def backgrounds(n):
        for _ in range(n):
            yield image, m

    return image, found.landmarks, m, backgrounds, found.n_faces, found.index


def _video(face: Path, cfg: FaceConfig, fps: float, max_frames: int | None = None, detect_every: int = 2):
    """Track the face through the video (landmarks only), smooth the alignments, and pick the
    frame with the most closed mouth as the reference. Frames are kept in memory (as JPEG when the
    raw frames would pass ~1 GB) so the video can be played back and forth (ping-pong) to cover
    audio longer than the video. Only the first ``max_frames`` frames are read (the speech's length:
    the rest would never be shown), so a long video costs what its first seconds cost.

    Landmarks are found on every ``detect_every``-th frame only (the face mesh is the costliest
    step of dubbing); the alignments in between are interpolated, which the temporal smoothing
    does anyway. A skipped frame counts as having a face when its detected neighbours do."""
    import cv2

    from .face import mouth_opening, smooth_matrices

    frames, lms, found, n_faces = [], [], [], 0
    raw_bytes = 0
    best, best_open = None, np.inf
    with FaceMesh(cfg, video=True) as mesh:
        for k, frame in enumerate(iter_video(face, fps, max_frames)):
            frame = _even(frame)
            raw_bytes += frame.nbytes
            f = mesh.detect(frame) if k % detect_every == 0 else None
            found.append(f is not None)
            lms.append(f.landmarks if f is not None else None)
            if f is not None:
                n_faces = max(n_faces, f.n_faces)
                o = float(mouth_opening(f.landmarks))
                if o < best_open:
                    best, best_open = (k, frame), o
            frames.append(frame)
            if raw_bytes > 1 << 30:
                frames = [f if isinstance(f, bytes) else cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                          for f in frames]
    if best is None:
        raise TalkingFaceError(f"{face}: no face found in any frame of the video")
    # A skipped frame has a face when the detected frames on both sides agree that there is (or
    # is not) one; where they disagree (the face enters or leaves), look for real.
    t = len(frames)
    present = list(found)
    unsure = []
    for k in range(t):
        if k % detect_every:
            before = found[k - k % detect_every]
            after = found[k - k % detect_every + detect_every] if k - k % detect_every + detect_every < t else before
            present[k] = before
            if before != after:
                unsure.append(k)
    if unsure:
        with FaceMesh(cfg) as still_mesh:
            for k in unsure:
                fr = frames[k]
                f = still_mesh.detect(cv2.imdecode(np.frombuffer(fr, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                                      if isinstance(fr, bytes) else fr)
                found[k] = present[k] = f is not None
                lms[k] = f.landmarks if f is not None else None
    found_arr, present = np.array(found), np.array(present)
    raw = np.stack([alignment_matrix(lm, cfg) if lm is not None else np.zeros((2, 3), np.float32) for lm in lms])
    mats = smooth_matrices(raw, found_arr, cfg.smooth_sigma)

    def backgrounds(n):
        for k in range(n):
            i = k % (2 * t - 2) if t > 1 else 0
            i = i if i < t else 2 * t - 2 - i  # ping-pong: play forwards, then backwards
            fr = frames[i]
            if isinstance(fr, bytes):
                fr = cv2.imdecode(np.frombuffer(fr, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            yield fr, (mats[i] if present[i] else None)

    def frame_at(i):
        fr = frames[i]
        return cv2.imdecode(np.frombuffer(fr, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] if isinstance(fr, bytes) else fr

    k, ref_frame = best
    return ref_frame, lms[k], mats[k], backgrounds, n_faces, 0, InteriorLibrary(frame_at, lms)


def prepare_inputs(face: str | Path, audio: str | Path, crop_size: int, fps: float = 25.0, face_index: int = 0,
                   face_cfg: FaceConfig = FaceConfig(), audio_cfg: AudioConfig = AudioConfig(), phones: bool = False,
                   text: str | None = None, language: str = "en") -> Prepared:
    """``phones``: the model hears a phone track too (``generator.phones``): the phonetic front end
    aligns ``text`` to the speech, or recognises the phones without one (``phonetic.phone_track``)."""
    face, audio = Path(face), Path(audio)
    cfg = dataclasses.replace(face_cfg, crop_size=crop_size)
    speech = read_audio(audio, audio_cfg.sample_rate)
    if float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise TalkingFaceError(f"{audio}: the audio is silent")
    n = n_frames_for(len(speech) / audio_cfg.sample_rate, fps)
    interior = None
    if is_image(face):
        src, lm, m, backgrounds, n_faces, index = _photo(face, cfg, face_index)
    else:  # the speech's frames only
        src, lm, m, backgrounds, n_faces, index, interior = _video(face, cfg, fps, max_frames=n)
    if n_faces > 1:
        order = "largest" if cfg.pick == "largest" else "most central"
        which = f"the {order} one (index 0)" if index == 0 else f"index {index} (0 = the {order})"
        log.warning("%s: %d faces found; animating %s; choose with --face-index", face, n_faces, which)
    ref_crop = warp_face(src, m, crop_size)
    ref_points = (transform_points(m, lm)[LOWER_FACE] / crop_size).astype(np.float32)

    mel = normalize_utterance(log_mel(speech, audio_cfg))
    if text and not phones:
        log.warning("this model does not hear phones (generator.phones = none): the text is not used")
    if phones:
        track, how = phone_track(speech, text, language)
        log.info("phones: %s (%.0f%% of the speech's steps outside silence)", how,
                 100 * float(np.mean((track > 0)[: mel.shape[-1]])))
        mel = with_rows(mel, one_hot(track))  # (n_mels + N_PHONES, M)
    size = (src.shape[1], src.shape[0])
    db = loudness(speech, n, fps, audio_cfg.sample_rate)
    return Prepared(ref_crop, ref_points, src, m, backgrounds, size, n_faces, index, mel, n, lm, db,
                    is_image(face), interior)


class _Alive:
    """Blinks and head motion on the frames of one photo (``eyes.py``, ``head.py``), from schedules
    of ``n_frames`` frames (a longer session repeats them). ``loudness``: (n_frames,) dB per frame,
    when known ahead: blinks then move to its pauses and the head nods after its rises."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...], n_frames: int, fps: float, seed: int,
                 blinks: bool, head_motion: float, loudness: np.ndarray | None = None):
        self.lids = self.closure = self.head = self.motion = None
        if blinks:
            from .eyes import EyeLids, blink_schedule

            self.lids = EyeLids(landmarks, shape)
            if not self.lids.open:
                log.info("the photo's eyes look closed: no blinks")
            speaking = None if loudness is None else ~quiet_frames(loudness)
            self.closure = blink_schedule(n_frames, fps, speaking, seed)
        if head_motion > 0:
            from .head import HeadWarp, head_schedule

            self.head = HeadWarp(landmarks, shape)
            self.motion = head_schedule(n_frames, fps, loudness, seed, head_motion)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Where frames can differ from the photo because of the eyes or the head."""
        eyes = [e[:4] for e in self.lids.eyes] if self.lids is not None and self.lids.open else []
        return eyes + ([self.head.box] if self.head is not None else [])

    def draw(self, frame: np.ndarray, k: int) -> np.ndarray | None:
        """Frame ``k`` with its blink and head motion drawn, or None when it has neither."""
        c = 0.0 if self.lids is None else float(self.closure[k % len(self.closure)])
        if c <= 0 and self.head is None:
            return None
        if c > 0:
            frame = self.lids.draw(frame, c)
        if self.head is not None:
            frame = self.head.draw(frame, self.motion[k % len(self.motion)])
        return frame


FIRST_CHUNK = 4


@torch.no_grad()
def _frames(model: Model, p: Prepared, fps: float, chunk: int, progress: bool, audio_cfg: AudioConfig,
            precision: str = "auto", articulation: float = 1.0, keep_expression: bool = True,
            blinks: bool = False, seed: int = 0, head_motion: float = 0.0,
            interior: bool = True) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    from .compose import Compositor
    from .inference import crop_to_tensor

    dtype = compute_dtype(precision, model.device)

    g = model.generator
    s, feather = model.config.crop_size, model.config.feather_rows
    enc = g.encode_reference(crop_to_tensor(p.ref_crop).to(model.device), torch.from_numpy(p.ref_points)[None].to(model.device))
    rest = g.rest_offsets(enc, silence_window(p.mel, audio_cfg)[None].to(model.device)) if keep_expression else None
    state = None
    comp, comp_m = None, None
    bgs = p.backgrounds(p.n_frames)
    alive = _Alive(p.landmarks, p.src_image.shape, p.n_frames, fps, seed, blinks, head_motion, p.loudness)
    with tqdm(total=p.n_frames, desc="generate", unit="frame", disable=not progress) as bar:
        # A short first chunk: the first frame comes ~0.3 s sooner (benchmarks/start_time.py).
        starts = [0, *range(min(chunk, FIRST_CHUNK), p.n_frames, chunk)]
        for start, end in zip(starts, starts[1:] + [p.n_frames]):
            t = end - start
            mel = frame_windows(p.mel, t, fps, audio_cfg, first=start)[None].to(model.device)  # (1, t, n_mels, steps)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = g(mel, enc, state=state, crops=False, articulation=articulation, rest=rest)
            state = out["state"]
            flow, mask, res, points = (out[k][0].float().cpu().numpy() for k in ("flow", "mask", "residual", "points"))
            for i in range(t):
                frame, m = next(bgs)
                if m is None:  # no face in this video frame: pass it through
                    yield frame
                    continue
                if comp is None or comp_m is not m:
                    comp, comp_m = Compositor(frame.shape, m, s, feather), m
                out_frame = comp.compose(frame, p.src_image, p.src_matrix, flow[i], mask[i], res[i])
                if interior and p.interior is not None:
                    # the generated inner lips in this frame's pixels; the eye distance the crop puts them at
                    ring = transform_points(invert(m), points[i][INNER_IN_LOWER_FACE] * s)
                    iod = FaceConfig().iod * s / float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))
                    out_frame = p.interior.paste(out_frame, ring, iod)
                drawn = alive.draw(out_frame, start + i)
                if drawn is not None:  # still only a box differs (None: the face was outside the frame)
                    out_frame = PatchedFrame.of(drawn, frame, _union(getattr(out_frame, "box", None), *alive.boxes))
                yield out_frame
            bar.update(t)


MAX_ARTICULATION = 3.0
MAX_HEAD_MOTION = 3.0  # the warp stays one to one well past this (head.HeadWarp.folds)


def check_articulation(articulation: float) -> float:
    """``articulation`` scales the predicted lip and jaw motion: 1 as predicted, 0 a still mouth.
    Capped at 3: the renderers were trained on motion within ``max_point_offset``, and scaled
    motion is clamped there (``Generator.forward``). Returns it as a float."""
    try:
        a = float(articulation)
    except (TypeError, ValueError):
        a = float("nan")
    if not 0.0 <= a <= MAX_ARTICULATION:  # also refuses NaN
        raise ValueError(f"articulation must be a number between 0 and {MAX_ARTICULATION:g}, not {articulation!r}")
    return a


def _prefetch(it: Iterator, depth: int = 8) -> Iterator:
    """Run ``it`` in a background thread, ``depth`` items ahead. Generation (torch, OpenCV) and
    H.264 encoding both release the GIL, so on two cores they overlap instead of taking turns."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run():
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put((True, x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((False, e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                raise x
            if x is done:
                return
            yield x
    finally:
        stop.set()


def stream(face: str | Path, audio: str | Path, model: Model | None = None, fps: float = 25.0, face_index: int = 0,
           chunk: int = 50, progress: bool = False, precision: str = "auto", articulation: float = 1.0,
           keep_expression: bool = True, text: str | None = None, language: str = "en", blinks: bool | None = None,
           still: bool = False, seed: int = 0, head_motion: float | None = None) -> Iterator[np.ndarray]:
    """Yield full-resolution RGB frames (H, W, 3) uint8 of ``face`` speaking ``audio``.
    ``precision``: "auto" (bfloat16 where the CPU computes it natively), "fp32" or "bf16"
    (``inference.compute_dtype``). ``articulation``: how far the lips move, as a multiple of the
    model's predicted motion (``check_articulation``; README "Articulation"). ``keep_expression``:
    the photo's own mouth (a smile, parted lips) is the rest the speech moves away from and back
    to, instead of the closed mouth the model learned from its training speaker
    (``Generator.rest_offsets``; README "Expression"). ``text``: what is said, when known: a model
    that hears phones (``generator.phones``) then gets them force-aligned to it instead of
    recognised; ``language``: the speech's language (other than English: no phones, the audio
    alone; one log line says so). ``blinks``: the eyes blink at a talking person's rate, more at
    pauses (``eyes.py``; default: on for a photo, off for a video, which keeps its own eyes);
    ``head_motion``: the amplitude of the head's sway and nods, 0-3 (``head.py``; default 1 on a
    photo, 0 on a video); ``still``: head and eyes exactly as in the photo, only the mouth moves;
    ``seed``: the blinks' and the head's schedules."""
    model = model or load_model()
    compute_dtype(precision, model.device)  # a bad value fails now, not at the first frame
    check_articulation(articulation)
    head_motion = check_head_motion(head_motion)
    p = prepare_inputs(face, audio, model.config.crop_size, fps, face_index, phones=model.config.phones != "none",
                       text=text, language=language)
    yield from _frames(model, p, fps, chunk, progress, AudioConfig(), precision, articulation, keep_expression,
                       _blinks(p, blinks, still), seed, _head_motion(p, head_motion, still))


def _union(*boxes) -> tuple[int, int, int, int]:
    """The smallest (x0, y0, x1, y1) box holding all of ``boxes`` (None ones left out)."""
    x0, y0, x1, y1 = np.array([b for b in boxes if b is not None]).T
    return int(x0.min()), int(y0.min()), int(x1.max()), int(y1.max())


def _head_motion(p: Prepared, head_motion: float | None, still: bool) -> float:
    """The head's motion amplitude: none when ``still``; by default 1 on photos and 0 on videos
    (a video keeps its own head)."""
    if still:
        return 0.0
    if head_motion is None:
        return 1.0 if p.is_photo else 0.0
    if head_motion and not p.is_photo:
        log.info("head motion is drawn on photos; the video keeps its own head")
        return 0.0
    return float(head_motion)


def check_head_motion(head_motion: float | None) -> float | None:
    """None (the default for the face) or a number in [0, MAX_HEAD_MOTION]."""
    if head_motion is None:
        return None
    try:
        a = float(head_motion)
    except (TypeError, ValueError):
        a = float("nan")
    if not 0.0 <= a <= MAX_HEAD_MOTION:
        raise ValueError(f"head_motion must be a number between 0 and {MAX_HEAD_MOTION:g}, not {head_motion!r}")
    return a


def _blinks(p: Prepared, blinks: bool | None, still: bool) -> bool:
    """Whether to draw blinks: never when ``still``; by default on photos only."""
    if still:
        return False
    if blinks and not p.is_photo:
        log.info("blinks are drawn on photos; the video keeps its own eyes")
    return p.is_photo if blinks is None else bool(blinks) and p.is_photo


def _counted(frames: Iterator[np.ndarray], total: int, on_progress: Callable[[int, int], None]) -> Iterator[np.ndarray]:
    """Pass frames on, calling ``on_progress(done, total)`` as the consumer takes each one."""
    on_progress(0, total)
    for done, frame in enumerate(frames, 1):
        yield frame
        on_progress(done, total)


def generate(face: str | Path, audio: str | Path, out: str | Path | None = None, model: Model | None = None,
             fps: float = 25.0, face_index: int = 0, chunk: int = 50, seed: int = 0, progress: bool = True,
             on_progress: Callable[[int, int], None] | None = None, crf: int = 18, preset: str | None = None,
             precision: str = "auto", articulation: float = 1.0, keep_expression: bool = True,
             text: str | None = None, language: str = "en", blinks: bool | None = None, still: bool = False,
             head_motion: float | None = None):
    """Make the talking video. With ``out``: write an H.264 + AAC mp4 atomically and return its path;
    without: return the frames as a list (short clips only). ``progress`` shows a tqdm bar;
    ``on_progress(done, total)`` is called in the caller's thread as each frame is finished
    (written, with ``out``), from ``(0, total)`` once the inputs are read to ``(total, total)``.
    ``crf``/``preset``: H.264 quality and x264 preset of the mp4 (``media.write_video``);
    ``precision``, ``articulation``, ``keep_expression``, ``text``, ``language``, ``blinks``,
    ``head_motion``, ``still``: as for ``stream`` (``seed`` also draws the blinks' and the head's schedules)."""
    torch.manual_seed(seed)  # the generator is deterministic; kept for future stochastic parts
    compute_dtype(precision, model.device if model else "cpu")
    check_articulation(articulation)
    head_motion = check_head_motion(head_motion)
    if out is not None:
        check_writable(out, inputs=[face, audio])
    model = model or load_model()
    p = prepare_inputs(face, audio, model.config.crop_size, fps, face_index, phones=model.config.phones != "none",
                       text=text, language=language)
    frames = _frames(model, p, fps, chunk, progress, AudioConfig(), precision, articulation, keep_expression,
                     _blinks(p, blinks, still), seed, _head_motion(p, head_motion, still))
    if out is None:
        return list(_counted(frames, p.n_frames, on_progress) if on_progress else frames)
    sound = read_audio(audio, OUTPUT_SAMPLE_RATE)
    frames = _prefetch(frames)
    if on_progress is not None:
        frames = _counted(frames, p.n_frames, on_progress)
    n = write_video(out, frames, fps, audio=sound, sample_rate=OUTPUT_SAMPLE_RATE, crf=crf, preset=preset)
    log.info("wrote %s: %d frames (%.2f s), %dx%d", out, n, n / fps, *p.size)
    return Path(out)


def __getattr__(name: str):
    # LiveSession lives in live.py, which builds on this module: imported when first asked for.
    if name == "LiveSession":
        from .live import LiveSession

        return LiveSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
