"""talkingface.audio checked against independent numpy/scipy references and real GRID speech."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

from talkingface.audio import (
    LOG_FLOOR,
    audio_frame_features,
    envelope_projection,
    frame_windows,
    log_mel,
    loudness,
    mfcc,
    normalize_utterance,
    speech_span,
)
from talkingface.config import AudioConfig

CFG = AudioConfig()
SR = CFG.sample_rate
ALIGN = Path(__file__).parent / "data" / "grid" / "s1" / "bbaf2n.align"


# ----------------------------------------------------------------------------------------------
# Independent reference (numpy only), written from the documented definition in audio.py:
# HTK mel scale, triangles between n_mels + 2 mel-spaced edges from f_min to f_max, each scaled
# to unit area (2 / (f_hi - f_lo), Slaney), a Hann window of win_length centred in n_fft,
# centred frames with reflect padding, power spectrum, natural log with the documented floor (LOG_FLOOR).


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def _ref_edges(cfg=CFG):
    return _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))


def _ref_filterbank(cfg=CFG):
    freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    edges = _ref_edges(cfg)
    fb = np.zeros((cfg.n_mels, len(freqs)))
    for b in range(cfg.n_mels):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        rising = (freqs >= lo) & (freqs <= mid)
        falling = (freqs > mid) & (freqs <= hi)
        fb[b, rising] = (freqs[rising] - lo) / (mid - lo)
        fb[b, falling] = (hi - freqs[falling]) / (hi - mid)
        fb[b] *= 2.0 / (hi - lo)
    return fb


def _ref_mel_power(x, cfg=CFG):
    x = np.asarray(x, dtype=np.float64)
    n_fft, hop, wl = cfg.n_fft, cfg.hop_length, cfg.win_length
    # Periodic Hann (as torch.hann_window and scipy.signal.get_window('hann') build it).
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(wl) / wl)
    window = np.zeros(n_fft)
    window[(n_fft - wl) // 2: (n_fft - wl) // 2 + wl] = hann
    padded = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = len(x) // hop + 1
    frames = np.stack([padded[m * hop: m * hop + n_fft] for m in range(n_frames)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (M, F)
    return _ref_filterbank(cfg) @ power.T  # (n_mels, M)


def test_log_mel_matches_reference_on_real_speech(grid_audio):
    got = log_mel(grid_audio).numpy()
    mel_power = _ref_mel_power(grid_audio)
    ref = np.log(np.maximum(mel_power, LOG_FLOOR))
    assert got.shape == ref.shape == (CFG.n_mels, len(grid_audio) // CFG.hop_length + 1)
    assert got.dtype == np.float32
    loud = mel_power > 1e-4
    # Many cells of this (quiet, band-limited) clip sit near the floor; the
    # strict comparison still covers a third of the spectrogram, all of the speech.
    assert loud.mean() > 0.25
    assert np.abs(got - ref)[loud].max() < 1e-3
    assert np.abs(got - ref).max() < 1e-2  # the floor is the same too


def test_log_mel_batch_and_numpy_input(grid_audio):
    x = grid_audio[:8000]
    batch = log_mel(torch.from_numpy(np.stack([x, 0.5 * x])))
    assert batch.shape == (2, CFG.n_mels, 8000 // CFG.hop_length + 1)
    assert torch.allclose(batch[0], log_mel(x), atol=1e-5)
    # half the amplitude is a quarter of the power: log drops by log(4) where not floored
    loud = batch[0] > -5
    assert torch.allclose((batch[0] - batch[1])[loud], torch.full_like(batch[0][loud], np.log(4.0)), atol=1e-3)


def test_log_mel_very_short_input():
    out = log_mel(np.zeros(100, np.float32))
    assert out.shape[0] == CFG.n_mels and out.shape[1] >= 1
    assert torch.allclose(out, torch.full_like(out, np.log(LOG_FLOOR)))


def test_1khz_sine_peaks_in_nearest_band():
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = log_mel(x).numpy()
    centres = _ref_edges()[1:-1]
    assert mel.mean(1).argmax() == np.abs(centres - 1000).argmin()


# ----------------------------------------------------------------------------------------------
# Windows per video frame


def test_frame_windows_shape_and_indexing():
    rng = np.random.default_rng(0)
    t_frames = 10
    m = 4 * t_frames + 1  # what log_mel gives for t_frames / 25 s of audio
    feats = torch.from_numpy(rng.normal(size=(CFG.n_mels, m)).astype(np.float32))
    win = frame_windows(feats, t_frames)
    assert win.shape == (t_frames, CFG.n_mels, 35)
    band_min = feats.min(1).values
    for i in range(t_frames):
        for c in range(35):
            step = 4 * i + 2 - 17 + c  # centre column 17 is mel step 4 i + 2 (time (i + 0.5) / 25)
            want = feats[:, step] if 0 <= step < m else band_min
            assert torch.equal(win[i, :, c], want), (i, c)
    # edges: 15 padded steps before the first frame's window, 15 after the last one's
    assert torch.equal(win[0, :, :15], band_min[:, None].expand(-1, 15))
    assert torch.equal(win[-1, :, 20:], band_min[:, None].expand(-1, 15))
    # an explicit pad value
    win0 = frame_windows(feats, t_frames, pad_value=-7.0)
    assert (win0[0, :, :15] == -7.0).all() and torch.equal(win0[0, :, 15:], feats[:, :20])


@pytest.mark.parametrize("use_features", [False, True])
def test_click_lands_in_centre_column(use_features):
    t_frames = 50
    x = np.zeros(t_frames * 640, np.float32)
    clicked = [0, 7, 30, 49]
    for i in clicked:
        x[round((i + 0.5) / 25 * SR)] = 1.0  # t = (i + 0.5) / 25: frame floor(t * 25) = i
    if use_features:
        win = audio_frame_features(x, t_frames)
    else:
        win = frame_windows(log_mel(x), t_frames)
    energy = win.sum(1)  # (T, 35): per column, summed over bands
    for i in clicked:
        assert int(energy[i].argmax()) == 17, (i, energy[i])
        assert energy[i, 17] > energy[i, 16] and energy[i, 17] > energy[i, 18]
    # a frame with no click near it stays flat (silence only)
    assert torch.allclose(energy[15], energy[15, 0].expand(35))


def test_click_offset_moves_column():
    x = np.zeros(25 * 640, np.float32)
    x[(4 * 10 + 2 + 5) * CFG.hop_length] = 1.0  # five mel steps after frame 10's centre
    win = frame_windows(log_mel(x), 25)
    assert int(win[10].sum(0).argmax()) == 17 + 5
    assert int(win[11].sum(0).argmax()) == 17 + 5 - 4


# ----------------------------------------------------------------------------------------------
# Normalisation, MFCC


def test_normalize_utterance_per_band():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 80, 300)) * rng.uniform(0.5, 10, size=(1, 80, 1)) + rng.uniform(-20, 5, (1, 80, 1))
    out = normalize_utterance(torch.from_numpy(feats.astype(np.float32))).numpy()
    assert out.shape == feats.shape
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1.0, atol=3e-3)
    # a constant band (pure floor) stays finite
    flat = normalize_utterance(torch.full((3, 50), -11.5))
    assert torch.isfinite(flat).all() and (flat.abs() < 1e-3).all()


def test_mfcc_matches_scipy_dct(grid_audio):
    lm = log_mel(grid_audio)
    got = mfcc(lm).numpy()
    assert got.shape == (12, lm.shape[1])
    ref = scipy.fft.dct(lm.numpy().astype(np.float64), type=2, norm="ortho", axis=0)[1:13]
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max())
    assert mfcc(lm, n_coeffs=5).shape == (5, lm.shape[1])


# ----------------------------------------------------------------------------------------------
# Loudness, speech span, features of a real clip


@pytest.mark.parametrize("amp", [0.9, 0.5, 0.05])
def test_loudness_of_sine(amp):
    t = np.arange(2 * SR) / SR
    x = (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    db = loudness(x, 50)
    assert db.shape == (50,)
    np.testing.assert_allclose(db, 20 * np.log10(amp / np.sqrt(2)), atol=0.1)


def test_loudness_follows_the_signal():
    x = np.zeros(SR, np.float32)
    x[640 * 10: 640 * 12] = 0.5  # DC 0.5 during frames 10 and 11
    db = loudness(x, 25)
    np.testing.assert_allclose(db[10:12], 20 * np.log10(0.5), atol=1e-3)
    assert (np.delete(db, [10, 11]) < -90).all()


def _align_speech_bounds():
    words = [line.split() for line in ALIGN.read_text().split("\n") if line.strip()]
    speech = [(int(a) / 25000, int(b) / 25000) for a, b, w in words if w not in ("sil", "sp")]
    return speech[0][0], speech[-1][1]


def test_speech_span_on_grid_clip(grid_audio):
    start, end = speech_span(grid_audio)
    ref_start, ref_end = _align_speech_bounds()
    assert (ref_start, ref_end) == pytest.approx((0.95, 2.12))
    assert abs(start - ref_start) < 0.25, (start, ref_start)
    assert abs(end - ref_end) < 0.25, (end, ref_end)


def test_speech_span_of_a_burst():
    rng = np.random.default_rng(2)
    x = (0.001 * rng.normal(size=3 * SR)).astype(np.float32)
    x[SR: 2 * SR] += (0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    start, end = speech_span(x)
    assert start == pytest.approx(1.0, abs=0.041) and end == pytest.approx(2.0, abs=0.041)


def test_audio_frame_features_grid_clip(grid_audio):
    feats = audio_frame_features(grid_audio, 75)
    assert feats.shape == (75, CFG.n_mels, 35)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert feats.std() > 0.5  # normalised speech, not a constant


def test_log_mel_in_blocks_equals_one_pass(grid_audio):
    # Long audio is processed in blocks to keep memory flat; each block sees the same samples.
    whole = log_mel(grid_audio, CFG, block_frames=10**9)
    # Not bit for bit: each mel value is a 257-term float32 sum whose order BLAS picks by the matrix
    # width (and CPU), so two orders differ by up to 2 x 257 x 2^-24 = 3e-5 relative, 3e-5 in the log.
    torch.testing.assert_close(log_mel(grid_audio, CFG, block_frames=37), whole, atol=3e-5, rtol=0)
    assert whole.shape == (CFG.n_mels, len(grid_audio) // CFG.hop_length + 1)


def test_envelope_projection_keeps_the_envelope_and_drops_pitch_harmonics():
    """A projection (idempotent, symmetric) that keeps a smooth spectral tilt exactly and removes
    most of a comb of harmonics spaced a few bands apart; all coefficients = identity."""
    p = envelope_projection(80, 20)
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(p, p.T)
    bands = torch.arange(80, dtype=torch.float32)
    smooth = torch.cos(math.pi / 80 * (bands + 0.5) * 3)  # a DCT basis vector below the cut
    torch.testing.assert_close(p @ smooth, smooth, atol=1e-5, rtol=0)
    comb = torch.cos(2 * math.pi * bands / 4)  # harmonics every 4 bands
    assert float((p @ comb).norm()) < 0.15 * float(comb.norm())
    torch.testing.assert_close(envelope_projection(80, 80), torch.eye(80), atol=1e-5, rtol=0)

