"""Python API.

    from talkingface import api
    model = api.load_model()                       # the shipped checkpoint
    api.generate("photo.jpg", "speech.wav", "out.mp4", model=model)
    for frame in api.stream("photo.jpg", "speech.wav", model=model):
        ...                                        # (H, W, 3) uint8 frames, 25 fps, as they are made

Photos of any size/mode are read with EXIF orientation; the face is found and aligned once; the
generator runs over the audio in chunks carrying its recurrent state, and every frame is pasted
back into the full photo (see ``compose.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .audio import frame_windows, log_mel, normalize_utterance
from .config import AudioConfig, FaceConfig, GeneratorConfig
from .errors import TalkingFaceError
from .face import LOWER_FACE, FaceMesh, alignment_matrix, transform_points, warp_face
from .media import check_writable, is_image, n_frames_for, read_audio, read_image, write_video

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
    image: np.ndarray  # (H, W, 3) uint8, even size
    matrix: np.ndarray  # (2, 3) image -> crop
    ref_crop: np.ndarray  # (S, S, 3) uint8
    ref_points: np.ndarray  # (K, 2) in crop units
    n_faces: int
    face_index: int
    mel: torch.Tensor  # (n_mels, M) normalised log-mel of the whole speech
    n_frames: int
    audio_path: Path


def prepare_inputs(face: str | Path, audio: str | Path, crop_size: int, fps: float = 25.0, face_index: int = 0,
                   face_cfg: FaceConfig = FaceConfig(), audio_cfg: AudioConfig = AudioConfig()) -> Prepared:
    face, audio = Path(face), Path(audio)
    if not is_image(face):
        raise TalkingFaceError(f"{face}: expected a photo (jpg, png, webp, bmp, tiff); video input is not supported yet")
    image = read_image(face)
    h, w = image.shape[:2]
    if max(h, w) > MAX_SIDE:
        import cv2

        f = MAX_SIDE / max(h, w)
        image = cv2.resize(image, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
        log.info("photo downscaled from %dx%d to %dx%d", w, h, image.shape[1], image.shape[0])
    h, w = image.shape[:2]
    image = np.ascontiguousarray(image[: h // 2 * 2, : w // 2 * 2])  # H.264 needs even sizes
    if min(image.shape[:2]) < 32:
        raise TalkingFaceError(f"{face}: image too small ({w}x{h})")
    cfg = dataclasses.replace(face_cfg, crop_size=crop_size)
    with FaceMesh(cfg) as mesh:
        found = mesh.detect(image, index=face_index)
    if found is None:
        raise TalkingFaceError(f"{face}: no face found in the photo")
    if found.n_faces > 1:
        log.warning("%s: %d faces found; animating the %s one (index %d; choose with --face-index)",
                    face, found.n_faces, "largest" if cfg.pick == "largest" else "most central", found.index)
    m = alignment_matrix(found.landmarks, cfg)
    ref_crop = warp_face(image, m, crop_size)
    ref_points = transform_points(m, found.landmarks)[LOWER_FACE] / crop_size

    speech = read_audio(audio, audio_cfg.sample_rate)
    if float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise TalkingFaceError(f"{audio}: the audio is silent")
    n = n_frames_for(len(speech) / audio_cfg.sample_rate, fps)
    mel = normalize_utterance(log_mel(speech, audio_cfg))
    return Prepared(image, m, ref_crop, ref_points.astype(np.float32), found.n_faces, found.index, mel, n, audio)


@torch.no_grad()
def _frames(model: Model, p: Prepared, fps: float, chunk: int, progress: bool, audio_cfg: AudioConfig) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    from .compose import PhotoCompositor
    from .inference import crop_to_tensor

    g = model.generator
    comp = PhotoCompositor(p.image, p.matrix, model.config.crop_size, model.config.feather_rows)
    enc = g.encode_reference(crop_to_tensor(p.ref_crop).to(model.device), torch.from_numpy(p.ref_points)[None].to(model.device))
    state = None
    with tqdm(total=p.n_frames, desc="generate", unit="frame", disable=not progress) as bar:
        for s in range(0, p.n_frames, chunk):
            t = min(chunk, p.n_frames - s)
            mel = frame_windows(p.mel, t, fps, audio_cfg, first=s)[None].to(model.device)  # (1, t, n_mels, steps)
            out = g(mel, enc, state=state)
            state = out["state"]
            flow, mask, res = (out[k][0].cpu().numpy() for k in ("flow", "mask", "residual"))
            for i in range(t):
                yield comp.compose(flow[i], mask[i], res[i])
            bar.update(t)


def stream(face: str | Path, audio: str | Path, model: Model | None = None, fps: float = 25.0, face_index: int = 0,
           chunk: int = 50, progress: bool = False) -> Iterator[np.ndarray]:
    """Yield full-resolution RGB frames (H, W, 3) uint8 of ``face`` speaking ``audio``."""
    model = model or load_model()
    p = prepare_inputs(face, audio, model.config.crop_size, fps, face_index)
    yield from _frames(model, p, fps, chunk, progress, AudioConfig())


def generate(face: str | Path, audio: str | Path, out: str | Path | None = None, model: Model | None = None,
             fps: float = 25.0, face_index: int = 0, chunk: int = 50, seed: int = 0, progress: bool = True):
    """Make the talking video. With ``out``: write an H.264 + AAC mp4 atomically and return its path;
    without: return the frames as a list (short clips only)."""
    torch.manual_seed(seed)  # the generator is deterministic; kept for future stochastic parts
    if out is not None:
        check_writable(out, inputs=[face, audio])
    model = model or load_model()
    p = prepare_inputs(face, audio, model.config.crop_size, fps, face_index)
    frames = _frames(model, p, fps, chunk, progress, AudioConfig())
    if out is None:
        return list(frames)
    sound = read_audio(audio, OUTPUT_SAMPLE_RATE)
    n = write_video(out, frames, fps, audio=sound, sample_rate=OUTPUT_SAMPLE_RATE)
    log.info("wrote %s: %d frames (%.2f s), %dx%d", out, n, n / fps, p.image.shape[1], p.image.shape[0])
    return Path(out)
