"""Live sessions: the streaming log-mel equals the offline one, the causal windows never use speech
that has not arrived, and ``api.LiveSession`` returns ``generate``'s frames, as many, in order."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from talkingface import api
from talkingface.audio import frame_windows, log_mel, normalize_utterance
from talkingface.config import AudioEncoderConfig, GeneratorConfig, IdentityEncoderConfig
from talkingface.errors import TalkingFaceError
from talkingface.media import n_frames_for, read_video
from talkingface.models.generator import Generator
from talkingface.streaming import LiveFeatures, LogMelStream, RunningNormalizer, SpeechPrior, live_windows

DATA = Path(__file__).parent / "data"
GRID = DATA / "grid/s1/bbaf2n.mp4"
SR = 16000


@pytest.fixture(scope="module")
def speech():
    return read_video(GRID, sample_rate=SR)[1]  # (N,) 3 s of GRID speech


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "face.png"
    Image.fromarray(read_video(GRID, sample_rate=None)[0][0]).save(path)
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
    g = Generator(cfg)
    with torch.no_grad():  # off the "copy the photo" start, so frames really move
        for p in list(g.motion_head[-1].parameters()) + [g.out[-1].weight]:
            p.normal_(0, 0.02)
    return api.Model(g.eval(), cfg, {})


@pytest.mark.parametrize("n", [0, 100, 256, 257, 1000, None])
def test_log_mel_stream_equals_log_mel(speech, n):
    x = speech if n is None else speech[:n]
    rng = np.random.default_rng(n or 1)
    s, parts, i = LogMelStream(), [], 0
    while i < len(x):
        k = int(rng.integers(1, 2000))
        parts.append(s.push(x[i: i + k]))
        i += k
    parts.append(s.flush())
    got = torch.cat(parts, 1)
    want = log_mel(x) if len(x) else torch.zeros(80, 0)
    assert got.shape == want.shape
    # The same samples through the same STFT; only the block widths differ (float32 summation order).
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_running_normalizer_reaches_unit_statistics():
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.normal(5.0, 2.0, (80, 1000)).astype(np.float32))  # far from the prior
    out = RunningNormalizer(SpeechPrior.shipped())(raw)
    late = out[:, 500:]
    assert abs(float(late.mean())) < 0.1 and abs(float(late.std()) - 1.0) < 0.1


def test_live_windows_are_causal_and_close_to_offline(speech):
    n = n_frames_for(len(speech) / SR)
    live = live_windows(speech, n)
    offline = frame_windows(normalize_utterance(log_mel(speech)), n)
    assert live.shape == offline.shape == (n, 80, 35)
    # Running statistics instead of the utterance's: close once a second of speech is in.
    late = np.corrcoef(live[25:].flatten(), offline[25:].flatten())[0, 1]
    assert late > 0.97, late
    # Causal: the windows returned before the speech changes do not depend on what comes after.
    cut = 20000
    a, b = LiveFeatures(), LiveFeatures()
    wa = a.push(speech[:cut])
    wb = b.push(speech[:cut])
    later_a = torch.cat([a.push(speech[cut:]), a.flush(n)])
    later_b = torch.cat([b.push(np.zeros_like(speech[cut:])), b.flush(n)])
    assert len(wa) > 0 and torch.equal(wa, wb)
    assert not torch.equal(later_a, later_b)
    # A frame is returned once its window's last step (186 ms past its centre) is in, not later.
    k = len(wa)
    centre = (k - 1 + 0.5) / 25
    assert centre + a.lookahead_s <= cut / SR < centre + a.lookahead_s + 0.04 + 0.01


def test_live_session_frames_match_generate(model, photo, speech, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "speech.wav", speech, SR)
    offline = np.stack(api.generate(photo, tmp_path / "speech.wav", model=model, progress=False, still=True))
    live = api.LiveSession(photo, model=model, still=True)
    frames = []
    for s in range(0, len(speech), 640):  # 40 ms
        frames += live.push(speech[s: s + 640])
    frames += live.flush()
    assert len(frames) == len(offline) == n_frames_for(len(speech) / SR)
    assert frames[0].shape == offline[0].shape and frames[0].dtype == np.uint8
    got = np.stack(frames)
    photo_px = np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(got[:, :100], np.repeat(photo_px[None, :100], len(got), 0))  # above the eyes: the photo
    x0, y0, x1, y1 = live.box  # the mouth and the eyes (blinks): outside it, every frame is the photo
    outside = np.ones(photo_px.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(got[:, outside], np.repeat(photo_px[None, outside], len(got), 0))
    diff = np.abs(got.astype(int) - offline.astype(int))
    assert diff.mean() < 1.0, diff.mean()
    moving = np.abs(got.astype(int) - got[:1].astype(int)).max(axis=(1, 2, 3))
    assert (moving > 0).any()  # the mouth moves
    assert live.flush() == []
    with pytest.raises(RuntimeError):
        live.push(speech[:640])
    # With blinks (the default) the eyes close now and then; they are inside the box too.
    live = api.LiveSession(photo, model=model, head_motion=0)
    blinking = np.stack(live.push(np.resize(speech, SR * 6)) + live.flush())  # 6 s: a blink or more
    x0, y0, x1, y1 = live.box
    outside = np.ones(photo_px.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(blinking[:, outside], np.repeat(photo_px[None, outside], len(blinking), 0))
    still = api.LiveSession(photo, model=model, still=True)
    unblinking = np.stack(still.push(np.resize(speech, SR * 6)) + still.flush())
    blinked = np.abs(blinking.astype(int) - unblinking.astype(int)).max(axis=(1, 2, 3)) > 0
    assert blinked.any() and blinked.sum() < len(blinked) // 4, blinked.sum()  # blinks, but now and then
    # And the head sways (the default): nearly every frame moves, inside the box only.
    live = api.LiveSession(photo, model=model, blinks=False)
    swaying = np.stack(live.push(np.resize(speech, SR * 2)) + live.flush())
    x0, y0, x1, y1 = live.box
    outside = np.ones(photo_px.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(swaying[:, outside], np.repeat(photo_px[None, outside], len(swaying), 0))
    moved = np.abs(swaying.astype(int) - unblinking[: len(swaying)].astype(int)).max(axis=(1, 2, 3)) > 0
    assert moved.mean() > 0.8, moved.mean()


def test_live_session_any_rate_and_layout(model, photo, speech):
    import av

    res = av.AudioResampler(format="s16", layout="stereo", rate=48000)
    frame = av.AudioFrame.from_ndarray(speech[None], format="flt", layout="mono")
    frame.sample_rate = SR
    stereo = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in res.resample(frame) + res.resample(None)])
    live = api.LiveSession(photo, model=model, sample_rate=48000)
    frames = []
    for s in range(0, len(stereo), 1000):  # odd piece sizes, int16 stereo (N, 2)
        frames += live.push(stereo[s: s + 1000])
    frames += live.flush()
    assert len(frames) == n_frames_for(len(stereo) / 48000)
    assert live.done and live.frames == len(frames)


def test_live_session_bad_input(model, photo, tmp_path):
    live = api.LiveSession(photo, model=model)
    assert live.push(np.zeros(0, np.float32)) == []
    with pytest.raises(ValueError, match="NaN"):
        live.push(np.full(100, np.nan, np.float32))
    with pytest.raises(ValueError, match="mono"):
        live.push(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        live.push(np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="sample_rate"):
        api.LiveSession(photo, model=model, sample_rate=100)
    with pytest.raises(ValueError, match="articulation"):
        api.LiveSession(photo, model=model, articulation=9)
    with pytest.raises(TalkingFaceError, match="photo"):
        api.LiveSession(GRID, model=model)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    with pytest.raises(TalkingFaceError, match="no face"):
        api.LiveSession(blank, model=model)
    phones = GeneratorConfig(audio=model.config.audio, identity=model.config.identity, hidden=32, phones="with-mel")
    with pytest.raises(TalkingFaceError, match="phones"):
        api.LiveSession(photo, model=api.Model(Generator(phones), phones, {}))
    assert live.flush() == []  # nothing pushed: no frames


def test_speech_prior_of_matches_its_definition(speech):
    p = SpeechPrior.of([speech, speech[: len(speech) // 2]])
    m = torch.cat([log_mel(speech), log_mel(speech[: len(speech) // 2])], 1)
    np.testing.assert_allclose(p.mean, m.mean(1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p.std, m.std(1, unbiased=False).numpy(), rtol=1e-3, atol=1e-3)
    assert p.floor.shape == (80,) and (p.floor < 0).all()
    shipped = SpeechPrior.shipped()
    assert shipped.mean.shape == shipped.std.shape == shipped.floor.shape == (80,) and (shipped.std > 0).all()
