"""All container I/O, through PyAV (bundled FFmpeg; no system ffmpeg): the one place that decodes
and encodes media, used by corpus preparation and by inference alike.

- ``read_audio``: any file PyAV opens (wav, flac, mp3, m4a, ogg, or a video's audio track) ->
  mono float32 at the requested rate; with ``max_seconds``, longer audio is refused by the length
  its header states and, since headers lie, by decoding that stops at the limit.
- ``iter_video`` / ``read_video``: any container (mpg, mp4, avi, mov, flv, webm, mkv, variable
  frame rate) -> RGB uint8 frames resampled to a fixed rate *by timestamp*, decoded only as far
  as ``max_frames`` asks.
- ``read_image``: a still photo with EXIF orientation applied, any mode -> RGB uint8.

Pictures (photos and video frames) above ``MAX_PIXELS`` are refused from their header, before
anything is decoded: a 500 KB PNG can hold 13000 x 13000 pixels (~0.5 GB decoded).
- ``write_video``: H.264 (yuv420p) + AAC mp4, written to a temp file and renamed, so an
  interrupted write never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import TalkingFaceError

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # a photo or video frame: 40 megapixels (7744 x 5163) decode to ~120 MB RGB


class TooLarge(TalkingFaceError):
    """A picture or video frame over the pixel limit, refused from its header."""


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise TalkingFaceError(f"{path}: no such file")
    if path.is_dir():
        raise TalkingFaceError(f"{path}: is a directory, expected a media file")
    if path.stat().st_size == 0:
        raise TalkingFaceError(f"{path}: file is empty (0 bytes)")
    return path


def _open(path: Path):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise TalkingFaceError(f"{path}: cannot be read as media ({_short(e)})") from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


# ----------------------------------------------------------------------------------------------
# Audio


def read_audio(path: str | Path, sample_rate: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 in [-1, 1] at ``sample_rate``.

    ``max_seconds``: refuse longer audio without decoding it: at once when the container states a
    length over twice the limit (a stated length can be an estimate: between one and two limits,
    decoding decides), else as soon as the decoded samples pass the limit (a stated length can
    also lie). Without it every sample is kept, in one array sized from the stated length."""
    path = _check_file(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise TalkingFaceError(f"{path}: has no audio track")
        stream = container.streams.audio[0]
        stated = stated_seconds(container, stream)
        if max_seconds is not None and stated is not None and stated > 2 * max_seconds:
            raise TalkingFaceError(f"{path}: the audio is {stated:.1f} s long; at most {max_seconds:g} s is accepted")
        limit = None if max_seconds is None else int(max_seconds * sample_rate)
        samples = _Samples(sample_rate * (stated if stated is not None else 60.0), limit)
        # Keep the source channels and average them ourselves: FFmpeg's own downmix to mono
        # sums stereo at -3 dB each, so identical channels came out 3 dB louder (and clipped).
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples.add(out.to_ndarray().mean(axis=0))
                if samples.over:
                    break
            else:
                for out in resampler.resample(None):
                    samples.add(out.to_ndarray().mean(axis=0))
        except av.FFmpegError as e:
            # A truncated file still yields what was decoded before the damage.
            if not samples.n:
                raise TalkingFaceError(f"{path}: audio cannot be decoded ({_short(e)})") from None
            log.warning("%s: audio decoding stopped early (%s); using the first %.2f s", path, _short(e),
                        samples.n / sample_rate)
    if samples.over:
        raise TalkingFaceError(f"{path}: the audio is longer than the {max_seconds:g} s accepted")
    if not samples.n:
        raise TalkingFaceError(f"{path}: audio track holds no samples")
    audio = samples.array()
    return np.clip(audio, -1.0, 1.0, out=audio)


def stated_seconds(container, stream) -> float | None:
    """The length a stream's (or else the container's) header states, in seconds, if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


class _Samples:
    """Mono samples gathered into one preallocated float32 array (grown by half when the stated
    length was short), not a list of pieces concatenated at the end: the peak is one copy of the
    audio, not two. ``over`` once more than ``limit`` samples arrived (the rest are not kept)."""

    def __init__(self, expected: float, limit: int | None):
        size = int(expected) + 4096
        self.limit = limit
        self.buf = np.empty(size if limit is None else min(size, limit + 4096), np.float32)
        self.n = 0
        self.over = False

    def add(self, x: np.ndarray) -> None:
        if self.limit is not None and self.n + len(x) > self.limit:
            self.over = True
            return
        if self.n + len(x) > len(self.buf):
            grown = np.empty(max(self.n + len(x), len(self.buf) * 3 // 2), np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n: self.n + len(x)] = x
        self.n += len(x)

    def array(self) -> np.ndarray:
        if self.n < len(self.buf) * 0.9:  # a stated length well over the real one: give the rest back
            self.buf = self.buf[: self.n].copy()
        return self.buf[: self.n]


# ----------------------------------------------------------------------------------------------
# Video


@dataclass
class VideoInfo:
    width: int
    height: int
    source_fps: float
    duration_s: float
    has_audio: bool


def probe_video(path: str | Path) -> VideoInfo:
    path = _check_file(path)
    with _open(path) as c:
        if not c.streams.video:
            raise TalkingFaceError(f"{path}: has no video track")
        s = c.streams.video[0]
        rate = float(s.average_rate or s.guessed_rate or 25)
        dur = stated_seconds(c, s)
        dur = float("nan") if dur is None else dur
        return VideoInfo(s.codec_context.width, s.codec_context.height, rate, dur, bool(c.streams.audio))


def iter_video(path: str | Path, fps: float = 25.0, max_frames: int | None = None,
               max_pixels: int = MAX_PIXELS) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (H, W, 3) resampled to ``fps`` by presentation time.

    Output frame k shows what the source shows at time k / fps: the last source frame whose
    timestamp is <= that time. This handles variable frame rate and 29.97 -> 25 fps alike; the
    clip lasts until the end of its last source frame.

    ``max_frames``: stop after that many output frames; decoding stops with them (an hour of
    video costs what its first seconds cost). Also after ``50 * max_frames + 250`` source frames
    (a 1250 fps source), so a file whose timestamps stand still is not decoded to its end for
    nothing. Frames over ``max_pixels`` are refused from the header, before decoding.
    """
    path = _check_file(path)
    with _open(path) as container:
        if not container.streams.video:
            raise TalkingFaceError(f"{path}: has no video track")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > max_pixels:
            raise TooLarge(f"{path}: too large: {w} x {h} video frames (at most {max_pixels / 1e6:g} megapixels)")
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or fps)
        max_decoded = None if max_frames is None else 50 * max_frames + 250
        start = None
        k = 0  # next output frame index
        prev = None
        prev_t = 0.0
        n_decoded = 0
        try:
            for frame in container.decode(stream):
                if max_decoded is not None and n_decoded >= max_decoded:
                    log.warning("%s: %d source frames gave only %d frames at %g fps; reading stopped", path,
                                n_decoded, k, fps)
                    break
                t = frame.time if frame.time is not None else n_decoded / rate
                if start is None:
                    start = t
                t -= start
                n_decoded += 1
                if prev is not None:
                    # Every output time before this frame's timestamp belongs to the previous frame.
                    while k / fps < t - 1e-6:
                        yield prev
                        k += 1
                        if k == max_frames:
                            return
                prev = frame.to_ndarray(format="rgb24")
                prev_t = t
        except av.FFmpegError as e:
            if prev is None:
                raise TalkingFaceError(f"{path}: video cannot be decoded ({_short(e)})") from None
            log.warning("%s: video decoding stopped early (%s)", path, _short(e))
        if prev is None:
            raise TalkingFaceError(f"{path}: video track holds no frames")
        end = prev_t + 1.0 / rate  # the last frame is shown for one source frame period
        while k / fps < end - 1e-6 and (k + 0.5) / fps <= end and k != max_frames:
            yield prev
            k += 1


def read_video(path: str | Path, fps: float = 25.0, sample_rate: int | None = 16000):
    """Frames (T, H, W, 3) uint8 at ``fps``, and the audio track (or None when the file has none)."""
    frames = np.stack(list(iter_video(path, fps)))
    audio = None
    if sample_rate is not None and probe_video(path).has_audio:
        audio = read_audio(path, sample_rate)
    return frames, audio


# ----------------------------------------------------------------------------------------------
# Images


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".m4a", ".ogg", ".opus")  # what a folder of speech is listed by


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) with EXIF orientation applied; grayscale, RGBA (over white), CMYK,
    palette and 16-bit images are converted. Pictures over ``max_pixels`` are refused before
    they are decoded (``open_image``); a JPEG over it is decoded at 1/2, 1/4 or 1/8 scale instead."""
    from PIL import Image, ImageOps

    with open_image(path, max_pixels) as im:
        try:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit range -> 8-bit (not stretched by the image's own maximum, which turned
                # any dark 16-bit photo white); 32-bit "I" beyond 16 bits is scaled by its maximum.
                arr = np.asarray(im, dtype=np.float64)
                scale = 257.0 if arr.max() <= 65535 else arr.max() / 255.0
                arr = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr, "L")
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            raise TalkingFaceError(f"{path}: cannot be read as an image ({_short(e)})") from None


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_PIXELS):
    """The picture at ``path`` opened (Pillow reads the header only; pixels are decoded on first
    use), refused when it holds more than ``max_pixels``: "too large: W x H". A JPEG over the
    limit is set to decode at the smallest of 1/2, 1/4, 1/8 scale that fits (its DCT scaling:
    costs a fraction of a full decode), so a 48 MP phone photo still reads.
    Not an image at all: "cannot be read as an image"; too large: ``TooLarge``."""
    from PIL import Image, UnidentifiedImageError

    path = _check_file(path)
    limit = f"at most {max_pixels / 1e6:g} megapixels"
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:  # Pillow's own refusal, from the header too
        raise TooLarge(f"{path}: too large: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels ({limit})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TalkingFaceError(f"{path}: cannot be read as an image ({_short(e)})") from None
    with im:
        w, h = im.size
        if w * h > max_pixels and im.format == "JPEG":
            scale = next((s for s in (2, 4, 8) if -(-w // s) * -(-h // s) <= max_pixels), 8)
            im.draft(im.mode, (w // scale, h // scale))
            log.info("%s: %d x %d decoded at 1/%d scale (%d x %d)", path, w, h, scale, *im.size)
        if im.size[0] * im.size[1] > max_pixels:
            raise TooLarge(f"{path}: too large: {w} x {h} ({limit})")
        yield im


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str | None = None):
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception, KeyboardInterrupt included, the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    path = Path(path)
    for inp in inputs:
        with contextlib.suppress(FileNotFoundError):
            if path.resolve() == Path(inp).resolve():
                raise TalkingFaceError(f"{path}: output path is the same as an input file")
    if path.is_dir():
        raise TalkingFaceError(f"{path}: output path is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TalkingFaceError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise TalkingFaceError(f"{path}: output folder {parent} is not writable")
    return path


class PatchedFrame(np.ndarray):
    """An RGB frame known to equal ``base`` outside the box ``(x0, y0, x1, y1)``.

    A plain ndarray everywhere else; ``write_video`` uses the hint to convert only the box to
    YUV when consecutive frames share one base (a talking photo: only the mouth region changes)."""

    base: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None

    @classmethod
    def of(cls, frame: np.ndarray, base: np.ndarray, box: tuple[int, int, int, int]) -> PatchedFrame:
        out = frame.view(cls)
        out.base, out.box = base, box
        return out

    def __array_finalize__(self, obj) -> None:  # slices and copies are plain frames again
        self.base, self.box = None, None


class _YUVFrames:
    """RGB frames -> one reused yuv420p ``av.VideoFrame``, converted with OpenCV (SIMD; ~4x faster
    than FFmpeg's swscale from rgb24 here). For ``PatchedFrame``s of one base only the changed box
    (on even coordinates) is converted and written into the frame, which still holds the base
    everywhere else: a talking photo costs a mouth-sized conversion and copy per frame, not a
    full-frame one. Reusing the frame is safe: the encoder copies each picture before ``encode``
    returns (x264 takes its own copy on input)."""

    def __init__(self, h: int, w: int):
        import cv2

        self.cv2, self.h, self.w = cv2, h, w
        self.frame = av.VideoFrame(w, h, "yuv420p")
        self.planes = [np.frombuffer(pl, np.uint8).reshape(pl.height, pl.line_size)[:, : pl.width] for pl in self.frame.planes]
        # The base must not change in place between frames (the cached conversion would go stale).
        self.base: np.ndarray | None = None  # the base whose conversion the frame holds outside self.box
        self.candidate: np.ndarray | None = None
        self.base_yuv: list[np.ndarray] = []
        self.box: tuple[int, int, int, int] | None = None

    def _put(self, planes, box=None) -> None:
        """Write Y, U, V (full size, or the even ``box`` of them) into the frame."""
        x0, y0, x1, y1 = box or (0, 0, self.w, self.h)
        for k, (dst, src) in enumerate(zip(self.planes, planes)):
            d = 1 if k == 0 else 2
            dst[y0 // d: y1 // d, x0 // d: x1 // d] = src

    @staticmethod
    def _split(yuv: np.ndarray, h: int, w: int) -> list[np.ndarray]:
        """Views of the Y (h, w), U and V (h/2, w/2) planes of an I420 buffer (h * 3/2, w)."""
        flat = yuv.reshape(-1)
        n, q = h * w, h * w // 4
        return [flat[:n].reshape(h, w), flat[n: n + q].reshape(h // 2, w // 2), flat[n + q:].reshape(h // 2, w // 2)]

    def _convert(self, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        return self._split(self.cv2.cvtColor(np.ascontiguousarray(rgb), self.cv2.COLOR_RGB2YUV_I420), h, w)

    def __call__(self, frame: np.ndarray) -> av.VideoFrame:
        h, w = self.h, self.w
        base, box = getattr(frame, "base", None), getattr(frame, "box", None)
        if base is None or box is None or base.shape[:2] != frame.shape[:2] or (self.base is not base and self.candidate is not base):
            # a plain frame, or a base seen once (every video frame): convert it whole, no extra cost
            self.candidate = base
            self.base, self.box = None, None
            self._put(self._convert(frame[:h, :w]))
            return self.frame
        if self.base is not base:  # seen twice in a row: worth converting once and patching from now on
            self.base, self.box = base, None
            self.base_yuv = self._convert(base[:h, :w])
            self._put(self.base_yuv)
        x0, y0 = max(0, box[0]) // 2 * 2, max(0, box[1]) // 2 * 2
        x1, y1 = min(w, -(-box[2] // 2) * 2), min(h, -(-box[3] // 2) * 2)
        box = (x0, y0, x1, y1)
        if self.box is not None and self.box != box:  # the last box holds an older frame: restore the base there
            bx0, by0, bx1, by1 = self.box
            self._put([p[by0 // d: by1 // d, bx0 // d: bx1 // d] for p, d in zip(self.base_yuv, (1, 2, 2))], self.box)
        if x1 > x0 and y1 > y0:
            self._put(self._convert(frame[y0:y1, x0:x1]), box)
        self.box = box
        return self.frame


# x264 for generated videos on a small CPU: ultrafast's motion search and decisions (where the time
# goes) with CABAC and a short macroblock-tree lookahead (where the size goes; a still background is
# referenced by every frame and mbtree spends its bits once). benchmarks/encoder_settings.py, 300
# frames of a 1080p talking photo at crf 18: 2.3 s CPU, 1.31 MB, 37.5 dB in the mouth box, against
# veryfast's 4.1 s, 0.77 MB, 37.3 dB and plain ultrafast's 2.0 s, 4.97 MB, 39.4 dB.
FAST_X264 = {"preset": "ultrafast", "x264-params": "cabac=1:rc-lookahead=10:mbtree=1"}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
    preset: str | None = None,
    tune: str | None = None,
) -> int:
    """Encode RGB uint8 frames (H, W, 3) as H.264 + (optional) AAC mp4, atomically.

    ``preset``: an x264 preset name (ultrafast ... veryslow: slower = smaller files), or None for
    ``FAST_X264`` (the default for generated videos). Odd frame sizes are cropped by one pixel
    (yuv420p needs even sizes). ``PatchedFrame``s are converted to YUV only where they differ from
    their base. Returns the frame count.
    """
    n = 0
    with atomic_output(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vs.pix_fmt = "yuv420p"
            # Frame threads: PyAV's default (slice threads) keeps x264 on the caller's core, so the
            # encoder and the generator took turns; with frames in flight it uses the idle core.
            vs.thread_type = "FRAME"
            vs.options = {"crf": str(crf), **(FAST_X264 if preset is None else {"preset": preset}),
                          **({"tune": tune} if tune else {})}
            sound = None
            if audio is not None:
                sound = _AudioWriter(out, np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate)
            to_yuv = None
            for frame in frames:
                if n == 0:
                    h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
                    if h == 0 or w == 0:
                        raise TalkingFaceError("frames too small to encode")
                    vs.width, vs.height = w, h
                    to_yuv = _YUVFrames(h, w)
                f = to_yuv(frame)
                f.pts = n
                for packet in vs.encode(f):
                    out.mux(packet)
                n += 1
                if sound is not None:
                    # Interleave: the muxer holds every video packet in memory until audio up to the
                    # same time has arrived, so audio written only at the end would grow with length.
                    sound.write_until(n / fps)
            if n == 0:
                raise TalkingFaceError("no frames to write")
            for packet in vs.encode():
                out.mux(packet)
            if sound is not None:
                sound.finish()
    return n


class _AudioWriter:
    """Feeds mono float32 audio to an AAC stream piece by piece, in time order."""

    def __init__(self, out, audio: np.ndarray, sample_rate: int, stream=None, chunk: int = 1024 * 16):
        self.out, self.audio, self.rate, self.chunk = out, audio, sample_rate, chunk
        if stream is None:
            stream = out.add_stream("aac", rate=sample_rate)
            stream.layout = "mono"
        self.stream = stream
        self.pos = 0

    def write_until(self, seconds: float) -> None:
        end = min(len(self.audio), int(round(seconds * self.rate)))
        while self.pos < end:
            block = np.ascontiguousarray(self.audio[self.pos: min(end, self.pos + self.chunk)][None, :])
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self.pos
            self.pos += block.shape[1]
            for packet in self.stream.encode(frame):
                self.out.mux(packet)

    def finish(self) -> None:
        self.write_until(len(self.audio) / self.rate)
        for packet in self.stream.encode(None):
            self.out.mux(packet)


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    """Write a whole mono float32 signal to an already added audio ``stream`` (any codec)."""
    _AudioWriter(out, audio, sample_rate, stream).finish()


def n_frames_for(duration_s: float, fps: float = 25.0) -> int:
    """Number of video frames that cover ``duration_s`` of audio (rounded to the nearest frame)."""
    return max(1, int(math.floor(duration_s * fps + 0.5)))
