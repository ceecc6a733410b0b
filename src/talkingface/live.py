"""Live: a photo that talks as speech arrives.

    from talkingface import api
    live = api.LiveSession("photo.jpg", model=api.load_model(), sample_rate=16000)  # face found once
    frames = live.push(chunk)    # float32 mono samples, any length -> the frames now complete
    frames += live.flush()       # the rest, at the end of speech

Frames are full-resolution (H, W, 3) uint8 RGB at 25 fps, in order; a session returns as many as
``generate`` makes of the same speech. The audio windows are causal (``streaming.LiveFeatures``: a
running normalisation instead of the utterance's), so a frame is returned once the speech is in up
to its window's end, 186 ms after the frame's centre at 25 fps: that look-ahead plus the time
to make the frame is the session's latency (``benchmarks/live_latency.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .api import Model, _Alive, _photo, _union, check_articulation, check_head_motion, load_model
from .config import AudioConfig, FaceConfig
from .errors import TalkingFaceError
from .face import LOWER_FACE, transform_points, warp_face
from .inference import compute_dtype, crop_to_tensor
from .media import is_image, n_frames_for
from .streaming import LiveFeatures

log = logging.getLogger(__name__)


class _Resampler:
    """Mono float32 at ``rate`` -> at ``target``, piece by piece (FFmpeg's resampler via PyAV,
    which keeps its filter state between pieces)."""

    def __init__(self, rate: int, target: int):
        import av

        self._av = av
        self._r = av.AudioResampler(format="flt", layout="mono", rate=target)
        self.rate = rate
        self._pts = 0

    def _run(self, frame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._r.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0, np.float32)
        frame = self._av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._pts
        self._pts += len(x)
        return self._run(frame)

    def flush(self) -> np.ndarray:
        return self._run(None)


class LiveSession:
    """One photo, speech pushed as it arrives, frames out as soon as they can be made.

    ``face``: a photo (found and aligned once, here). ``sample_rate``: of the pushed samples (any;
    resampled to the model's 16 kHz). ``articulation``, ``keep_expression``, ``precision``,
    ``face_index``, ``blinks``, ``head_motion``, ``still``, ``seed``: as for ``api.stream`` (live, blinks
    cannot wait for a pause and nods cannot follow the speech: they come on schedule, the head sways). Models that hear phones (``generator.phones``) cannot
    run live yet: the phone recogniser needs the whole utterance."""

    def __init__(self, face: str | Path, model: Model | None = None, sample_rate: int = 16000, fps: float = 25.0,
                 face_index: int = 0, articulation: float = 1.0, keep_expression: bool = True,
                 precision: str = "auto", blinks: bool = True, still: bool = False, seed: int = 0,
                 head_motion: float = 1.0):
        from .compose import Compositor

        self.model = model = model or load_model()
        if model.config.phones != "none":
            raise TalkingFaceError("this model hears phones (generator.phones = "
                                   f"{model.config.phones!r}); live sessions need one that does not, e.g. the shipped one")
        if not (isinstance(sample_rate, int | np.integer) and 4000 <= sample_rate <= 384000):
            raise ValueError(f"sample_rate must be a whole number of Hz between 4000 and 384000, not {sample_rate!r}")
        face = Path(face)
        if not is_image(face):
            raise TalkingFaceError(f"{face}: live sessions animate a photo; a video can be dubbed with generate")
        self.articulation = check_articulation(articulation)
        self._dtype = compute_dtype(precision, model.device)
        self.fps, self.sample_rate = fps, int(sample_rate)
        self.audio_cfg = AudioConfig()
        s = model.config.crop_size
        cfg = FaceConfig(crop_size=s)
        image, lm, m, _, self.n_faces, self.face_index = _photo(face, cfg, face_index)
        if self.n_faces > 1:
            log.warning("%s: %d faces found; animating index %d; choose with face_index", face, self.n_faces,
                        self.face_index)
        self.image, self._m = image, m
        ref_crop = warp_face(image, m, s)
        ref_points = (transform_points(m, lm)[LOWER_FACE] / s).astype(np.float32)
        self.features = LiveFeatures(fps, self.audio_cfg)
        g = model.generator.eval()
        with torch.no_grad():
            self._enc = g.encode_reference(crop_to_tensor(ref_crop).to(model.device),
                                           torch.from_numpy(ref_points)[None].to(model.device))
            self._rest = (g.rest_offsets(self._enc, self.features.silence()[None].to(model.device))
                          if keep_expression else None)
        self._comp = Compositor(image.shape, m, s, model.config.feather_rows)
        # Ten minutes of schedules, repeated: a live session cannot know where the pauses and the
        # stressed syllables will be, so blinks come on schedule and the head sways without nods.
        head_motion = check_head_motion(head_motion)
        self._alive = _Alive(lm, image.shape, int(600 * fps), fps, seed, blinks and not still,
                             0.0 if still else head_motion or 0.0)
        self._resample = None if self.sample_rate == self.audio_cfg.sample_rate else \
            _Resampler(self.sample_rate, self.audio_cfg.sample_rate)
        self._state = None
        self.samples = 0  # pushed, at sample_rate
        self.frames = 0  # returned
        self.done = False

    @property
    def size(self) -> tuple[int, int]:
        """Output (W, H)."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the part of the photo the frames can differ from it in (the lower
        face and its feathered edge, the eyes when they blink, the head when it moves); elsewhere every
        frame is the photo."""
        c = self._comp
        boxes = ([] if c.empty else [(c.x0, c.y0, c.x1, c.y1)]) + self._alive.boxes
        return _union(*boxes) if boxes else (0, 0, 0, 0)

    @property
    def lookahead_s(self) -> float:
        """Speech past a frame's centre that must be in before the frame is returned."""
        return self.features.lookahead_s

    def _samples(self, chunk) -> np.ndarray:
        x = np.asarray(chunk)
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        elif not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"push float32 samples in [-1, 1] (or int16), not {x.dtype}")
        x = np.asarray(x, np.float32)
        if x.ndim == 2:  # (samples, channels): the channels' mean, as read_audio does for files
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise ValueError(f"push mono samples (N,) or (N, channels), not an array of shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("the pushed samples hold NaN or infinity")
        return np.clip(x, -1.0, 1.0)

    @torch.no_grad()
    def _render(self, windows: torch.Tensor) -> list[np.ndarray]:
        """(k, n_mels, steps) windows -> k full frames, the recurrent state carried on."""
        if not len(windows):
            return []
        g, dev = self.model.generator, self.model.device
        with torch.autocast("cpu", dtype=self._dtype or torch.bfloat16, enabled=self._dtype is not None):
            out = g(windows[None].to(dev), self._enc, state=self._state, crops=False,
                    articulation=self.articulation, rest=self._rest)
        self._state = out["state"]
        flow, mask, res = (out[k][0].float().cpu().numpy() for k in ("flow", "mask", "residual"))
        self.frames += len(windows)
        out = []
        for i in range(len(windows)):
            # np.array: a PatchedFrame's hints are for one encoder; callers get plain frames they own
            frame = np.array(self._comp.compose(self.image, self.image, self._m, flow[i], mask[i], res[i]))
            drawn = self._alive.draw(frame, self.frames - len(windows) + i)
            out.append(frame if drawn is None else drawn)
        return out

    def push(self, chunk) -> list[np.ndarray]:
        """Add speech (float32 mono samples in [-1, 1] at ``sample_rate``, any length); returns the
        frames it completes, in order (often none or one for a 40 ms chunk)."""
        if self.done:
            raise RuntimeError("this live session was flushed; start a new one")
        x = self._samples(chunk)
        self.samples += len(x)
        if self._resample is not None:
            x = self._resample(x)
        return self._render(self.features.push(x))

    def flush(self) -> list[np.ndarray]:
        """The end of speech: the remaining frames, up to as many as ``generate`` makes of it."""
        if self.done:
            return []
        self.done = True
        held = self.features.push(self._resample.flush()) if self._resample is not None else None
        windows = self.features.flush(self.frames_expected())
        return self._render(windows if held is None else torch.cat([held, windows]))

    def frames_expected(self) -> int:
        """Frames the speech pushed so far makes in all (``generate``'s count)."""
        return n_frames_for(self.samples / self.sample_rate, self.fps) if self.samples else 0
