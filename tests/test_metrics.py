"""Evaluation metrics: known values on synthetic data, invariances, and the LSE offset search."""

import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from talkingface.config import AudioEncoderConfig, SyncExpertConfig
from talkingface.evaluation import metrics as M
from talkingface.face import MOUTH_20


def _image(seed=0, t=2, h=48, w=40):
    """Smooth-ish random RGB frames (blurred noise), uint8."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (t, h, w, 3))
    k = np.ones(3) / 3
    x = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, x)
    return np.clip(x, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_identical_is_inf_or_capped():
    a = _image()
    assert M.psnr(a, a) == np.inf
    assert M.psnr(a, a, max_db=100.0) == 100.0


def test_psnr_constant_offset_known_value():
    a = np.full((3, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)
    assert M.psnr(a, b) == pytest.approx(20 * np.log10(255 / 10), abs=1e-9)
    # float data in [0, 1] with data_range 1
    assert M.psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(20 * np.log10(255 / 10), abs=1e-9)


def test_psnr_averages_per_frame():
    a = np.zeros((2, 8, 8, 1))
    b = a.copy()
    b[0] += 10
    b[1] += 20
    want = np.mean([20 * np.log10(255 / 10), 20 * np.log10(255 / 20)])
    assert M.psnr(a, b) == pytest.approx(want)


def test_ssim_identical_is_one():
    a = _image()
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-9)


def test_ssim_decreases_with_noise():
    a = _image(t=1, h=64, w=64)
    rng = np.random.default_rng(1)
    n = rng.standard_normal(a.shape)
    vals = [M.ssim(a, np.clip(a + s * n, 0, 255)) for s in (0, 5, 15, 40, 80)]
    assert vals[0] == pytest.approx(1.0)
    assert all(x > y for x, y in zip(vals, vals[1:])), vals


def test_ssim_shifted_copy_below_one():
    a = _image(t=1, h=64, w=64)
    b = np.roll(a, 3, axis=2)
    assert M.ssim(a, b) < 0.9


def test_ssim_matches_skimage_if_installed():
    skm = pytest.importorskip("skimage.metrics")
    a = _image(t=1, h=64, w=64)[0]
    b = np.clip(a + np.random.default_rng(2).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    ya = a.astype(float) @ np.array([0.299, 0.587, 0.114])
    yb = b.astype(float) @ np.array([0.299, 0.587, 0.114])
    ref = skm.structural_similarity(ya, yb, data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    assert M.ssim(a, b) == pytest.approx(ref, abs=1e-3)


def test_boxes():
    assert M.mouth_box(128) == (72, 112, 36, 92)
    assert M.mouth_box(256) == (144, 224, 72, 184)
    assert M.upper_face_box(128) == (0, 64, 0, 128)


def test_mouth_box_contains_template_mouth():
    from talkingface.config import FaceConfig
    from talkingface.face import template

    for s in (96, 128, 256):
        m = template(FaceConfig(crop_size=s))[MOUTH_20]
        t, b, l, r = M.mouth_box(s)
        assert (m[:, 1] > t).all() and (m[:, 1] < b).all() and (m[:, 0] > l).all() and (m[:, 0] < r).all()


# ----------------------------------------------------------------------------------------------
# Landmarks


def _faces(t=4, radius=10.0, iod=50.0):
    """(T, 478, 2) synthetic faces: mouth points on a circle of ``radius`` around (64, 90), eyes
    ``iod`` apart, everything else at the origin."""
    from talkingface.face import LEFT_EYE, RIGHT_EYE

    lm = np.zeros((t, 478, 2))
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    lm[:, MOUTH_20] = np.stack([64 + radius * np.cos(ang), 90 + radius * np.sin(ang)], -1)
    lm[:, LEFT_EYE] = [64 - iod / 2, 40]
    lm[:, RIGHT_EYE] = [64 + iod / 2, 40]
    return lm


def test_lmd_identical_and_translation_invariant():
    real = _faces()
    assert M.lmd(real, real) == 0.0
    moved = real + np.array([7.0, -3.0])
    assert M.lmd(moved, real) == pytest.approx(0.0, abs=1e-12)


def test_lmd_scaled_mouth_known_value():
    real = _faces(radius=10.0)
    pred = real.copy()
    # scale the mouth by 1.1 about the image origin (not its centroid) and shift it: after
    # centring, every point is 10% further out, i.e. 0.1 * 10 px = 1 px from its real position
    pred[:, MOUTH_20] = 1.1 * real[:, MOUTH_20] + 5.0
    assert M.lmd(pred, real) == pytest.approx(1.0)
    px, norm = M.lmd(pred, real, iod=np.full(4, 50.0))
    assert px == pytest.approx(1.0) and norm == pytest.approx(1.0 / 50)
    _, norm_scalar = M.lmd(pred, real, iod=50.0)
    assert norm_scalar == pytest.approx(0.02)


def test_lmd_skips_nan_frames():
    real = _faces(t=3)
    pred = real.copy()
    pred[:, MOUTH_20] *= 1.0
    pred[1, MOUTH_20] = real[1, MOUTH_20] * 1.1  # would add error
    pred[1, 0] = np.nan  # ... but the frame has a missing point
    pred[1, MOUTH_20[3]] = np.nan
    assert M.lmd(pred, real) == 0.0
    allnan = np.full_like(real, np.nan)
    assert np.isnan(M.lmd(allnan, real))


def test_mouth_curves_and_correlation():
    from talkingface.face import LIP_INNER_BOTTOM, LIP_INNER_TOP

    lm = _faces(t=20, iod=50.0)
    gap = 5 + 5 * np.sin(np.linspace(0, 6, 20))
    lm[:, LIP_INNER_TOP] = np.stack([np.full(20, 64.0), 90 - gap / 2], -1)
    lm[:, LIP_INNER_BOTTOM] = np.stack([np.full(20, 64.0), 90 + gap / 2], -1)
    c = M.mouth_curves(lm)
    assert np.allclose(c["opening"], gap / 50)
    # corners 61 and 291 are MOUTH_20 points 0 and 6: 108 degrees apart on the radius-10 circle
    assert np.allclose(c["width"], 2 * 10 * np.sin(np.radians(54)) / 50)
    assert M.curve_correlation(c["opening"], c["opening"]) == pytest.approx(1.0)
    assert M.curve_correlation(c["opening"], -c["opening"]) == pytest.approx(-1.0)
    assert M.curve_correlation(c["width"], c["opening"]) == 0.0  # constant curve
    x = c["opening"].copy()
    x[3] = np.nan
    assert M.curve_correlation(x, c["opening"]) == pytest.approx(1.0)


def test_pearson_auc_shared_with_trainer():
    from talkingface.training import sync_metrics, tasks

    assert tasks.pearson is M.pearson and sync_metrics.auc is M.auc
    assert M.auc([2, 3], [0, 1]) == 1.0 and M.auc([1], [1]) == 0.5


def test_paired_gain_compares_clip_by_clip():
    a = np.array([1.0, 2.0, 3.0, np.nan])
    b = np.array([0.0, 2.0, 5.0, 1.0])
    lo = M.paired_gain(a, b, lower_better=True, rng=np.random.default_rng(0))
    assert lo["n"] == 3 and lo["better"] == 1  # the NaN clip is left out; b lower only on the first
    assert lo["gain"] == pytest.approx(-1 / 3) and lo["a"] == pytest.approx(2.0) and lo["b"] == pytest.approx(7 / 3)
    assert -2.0 <= lo["lo"] <= lo["gain"] <= lo["hi"] <= 1.0  # a bootstrap mean of the gains [1, 0, -2]
    hi = M.paired_gain(a, b, lower_better=False, rng=np.random.default_rng(0))
    assert hi["gain"] == pytest.approx(1 / 3) and hi["better"] == 1
    same = M.paired_gain(np.arange(5.0), np.arange(5.0) + 0.5, lower_better=False, rng=np.random.default_rng(0))
    assert same["lo"] == same["hi"] == same["gain"] == pytest.approx(0.5) and same["better"] == 5
    assert M.paired_gain(np.array([np.nan]), np.array([1.0]), True, np.random.default_rng(0)) == {"n": 0}


# ----------------------------------------------------------------------------------------------
# LSE


class _ShiftStub(nn.Module):
    """Video window whose middle frame is t embeds as one-hot(t + shift); audio window of frame j
    embeds as one-hot(j). Audio and video agree exactly at offset +shift, and nowhere else."""

    def __init__(self, shift: int, dim: int = 128):
        super().__init__()
        self.cfg = SyncExpertConfig(frames=5)
        self.shift, self.dim = shift, dim

    def embed_video(self, lower):
        t = (lower[:, 2, 0, 0, 0] * 100).round().long()
        return F.one_hot(t + self.shift + 10, self.dim).float()

    def embed_audio(self, mel):
        j = mel[:, 0, 0].round().long()
        return F.one_hot(j + 10, self.dim).float()


def _stub_clip(t=40):
    lower = (torch.arange(t).float() / 100)[:, None, None, None].expand(t, 3, 4, 4).contiguous()
    mel = torch.arange(t).float()[:, None, None].expand(t, 80, 35).contiguous()
    return lower, mel


@pytest.mark.parametrize("shift", [2, 0])
def test_lse_finds_offset_of_stub(shift):
    lower, mel = _stub_clip()
    r = M.lse(_ShiftStub(shift), lower, mel)
    assert r["offset"] == shift
    assert r["lse_d"] == pytest.approx(0.0) and r["lse_d_window"] == pytest.approx(0.0)
    assert r["lse_c"] == pytest.approx(np.sqrt(2)) and r["lse_c_window"] == pytest.approx(np.sqrt(2))
    assert r["lse_c"] > 0
    assert r["dist_at_0"] == pytest.approx(0.0 if shift == 0 else np.sqrt(2))
    assert r["n_windows"] == 36


def test_lse_negative_offset_and_edge_windows():
    # middles run 2..37; with the match at offset -3 the first window (middle 2) would need audio
    # frame -1, so it has no matching offset: per window its best distance is sqrt(2), while the
    # clip-level curve at -3 averages only the windows that reach it
    lower, mel = _stub_clip()
    r = M.lse(_ShiftStub(-3), lower, mel)
    assert r["offset"] == -3 and r["lse_d"] == pytest.approx(0.0)
    assert r["lse_d_window"] == pytest.approx(np.sqrt(2) / 36)
    assert r["lse_c"] == pytest.approx(np.sqrt(2))


def test_sync_distance_table_skips_offsets_outside_clip():
    lower, mel = _stub_clip(t=12)
    offsets, table, mids = M.sync_distance_table(_ShiftStub(2), lower, mel, max_offset=15, stride=2)
    assert list(mids) == [2, 4, 6, 8]  # starts 0, 2, 4, 6: start 8 would need frame 12
    assert table.shape == (4, 31)
    a = mids[:, None] + offsets[None]
    assert np.array_equal(np.isfinite(table), (a >= 0) & (a < 12))


def test_lse_leaves_out_windows_without_a_face():
    """A landmark expert gives NaN embeddings for windows holding a frame without a face: those
    windows are left out, and a clip with none left gives NaN, not an error."""
    offsets = np.arange(-2, 3)
    table = np.array([[0.5, 0.2, 0.1, 0.4, 0.9], [np.nan] * 5, [0.7, 0.4, 0.3, 0.2, 0.8]])
    r = M.lse_from_table(offsets, table)
    assert r["n_windows"] == 2 and r["offset"] == 0 and r["lse_d"] == pytest.approx(0.2)
    assert r["lse_d_window"] == pytest.approx(0.15)
    empty = M.lse_from_table(offsets, np.full((3, 5), np.nan))
    assert empty["n_windows"] == 0 and np.isnan(empty["lse_d"]) and np.isnan(empty["dist_at_0"])


def test_lse_small_real_expert_is_finite_and_fast():
    from talkingface.models.sync_expert import SyncExpert

    torch.manual_seed(0)
    expert = SyncExpert(SyncExpertConfig(width=8, audio=AudioEncoderConfig(width=8)))
    expert.train()
    lower = torch.rand(75, 3, 64, 128) * 2 - 1
    mel = torch.randn(75, 80, 35)
    t0 = time.time()
    r = M.lse(expert, lower, mel)
    elapsed = time.time() - t0
    assert set(r) == {"lse_d", "lse_c", "lse_d_window", "lse_c_window", "offset", "dist_at_0", "n_windows"}
    assert all(np.isfinite(v) for v in r.values())
    assert 0 <= r["lse_d"] <= 2 and r["lse_c"] >= 0 and -15 <= r["offset"] <= 15
    assert expert.training  # mode restored
    assert elapsed < 5.0  # generous: the machine is shared with a training job


# ----------------------------------------------------------------------------------------------
# Smoothness, silence, identity


def test_smoothness_static_and_flicker():
    static = np.full((10, 32, 32, 3), 120, np.uint8)
    r = M.smoothness(static)
    assert r["diff"] == 0.0 and r["accel"] == 0.0
    flick = static.copy()
    flick[1::2] = 130
    r = M.smoothness(flick)
    assert r["diff"] == pytest.approx(10.0) and r["accel"] == pytest.approx(20.0)
    # float frames in [0, 1] are reported on the same 0-255 scale
    assert M.smoothness(flick / 255.0, data_range=1.0)["diff"] == pytest.approx(10.0)


def test_smoothness_box_and_silent_subset():
    x = np.zeros((8, 32, 32, 1))
    x[:, :, :16] = np.arange(8)[:, None, None, None] * 4.0  # left half ramps up: diff 2 over the frame
    x[5, 20:, 20:] = 50  # one-frame flash inside the box, in the speech part
    silent = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    box = (16, 32, 16, 32)
    r = M.smoothness(x, box=box, silent=silent)
    assert r["n_silent_transitions"] == 3
    assert r["diff_silent"] == 0.0 and r["accel_silent"] == 0.0
    assert r["diff"] > 0 and r["accel"] > 0
    whole = M.smoothness(x, silent=silent)
    assert whole["diff_silent"] == pytest.approx(2.0) and whole["accel_silent"] == 0.0
    none = M.smoothness(x, silent=np.zeros(8, bool))
    assert np.isnan(none["diff_silent"]) and none["n_silent_transitions"] == 0


def test_silence_mask_silence_then_tone(tone):
    sr = 16000
    rng = np.random.default_rng(0)
    quiet = (1e-4 * rng.standard_normal(sr)).astype(np.float32)
    audio = np.concatenate([quiet, tone(sr, 1.0)])
    m = M.silence_mask(audio, 50, fps=25, sample_rate=sr)
    assert m.dtype == bool and m.shape == (50,)
    assert m[:25].all() and not m[25:].any()
    assert M.silence_mask(np.zeros(sr, np.float32), 25).all()


def test_identity_preservation():
    ref = _image(t=1, h=64, w=64)[0]
    frames = np.repeat(ref[None], 3, 0).copy()
    frames[:, 32:] = 0  # the generated lower half does not matter
    r = M.identity_preservation(frames, ref, 64)
    assert r["psnr"] == np.inf and r["ssim"] == pytest.approx(1.0)
    assert M.identity_preservation(frames, ref, max_db=100.0)["psnr"] == 100.0
    noisy = np.clip(frames + np.random.default_rng(3).normal(0, 10, frames.shape), 0, 255).astype(np.uint8)
    r2 = M.identity_preservation(noisy, ref)
    assert 20 < r2["psnr"] < 60 and r2["ssim"] < 1.0


def test_curve_correlation_offset_undoes_a_recording_lag():
    rng = np.random.default_rng(0)
    sound = np.convolve(rng.normal(size=80), np.ones(4), "same")  # a mouth curve driven by the audio
    real = np.roll(sound, -2)  # the recorded video leads its audio by 2 frames: real[t] = sound[t + 2]
    real[-2:] = np.nan
    assert M.curve_correlation(sound, real) < 0.6
    assert M.curve_correlation(sound, real, offset=2) == pytest.approx(1.0)
    assert M.curve_correlation(sound, real, offset=-2) < 0.6
    assert M.curve_correlation(sound, real, offset=200) == 0.0


def test_curve_amplitude_measures_swing_not_shape():
    rng = np.random.default_rng(0)
    real = np.convolve(rng.normal(size=60), np.ones(3), "same")
    assert M.curve_amplitude(0.5 * real + 3.0, real) == pytest.approx(0.5)  # a damped, offset copy
    assert M.curve_amplitude(-2 * real, real) == pytest.approx(2.0)
    gappy = real.copy()
    gappy[:10] = np.nan  # frames without a detected face are left out of both curves
    assert M.curve_amplitude(0.5 * real, gappy) == pytest.approx(0.5)  # std over the same frames
    assert M.curve_amplitude(np.zeros(60), real) == 0.0  # a still face
    assert np.isnan(M.curve_amplitude(real, np.ones(60)))  # nothing to compare against
    with pytest.raises(ValueError, match="length"):
        M.curve_amplitude(real[:-1], real)
