"""Head motion: a schedule with real talking video's amplitudes, deterministic under its seed, with
nods after loudness rises; a warp that moves only the head region and never folds (no tearing);
``--head-motion`` and ``--still`` reach it."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkingface import api
from talkingface.cli import build_parser
from talkingface.config import AudioEncoderConfig, GeneratorConfig, IdentityEncoderConfig
from talkingface.head import NOD_DEPTH, TARGET_STD, HeadWarp, head_schedule
from talkingface.media import read_video
from talkingface.models.generator import Generator

GRID = Path(__file__).parent / "data/grid/s1/bbaf2n.mp4"
FPS = 25.0


def test_schedule_amplitudes_determinism_and_nods():
    n = int(10 * 60 * FPS)
    a = head_schedule(n, FPS, seed=1)
    assert np.array_equal(a, head_schedule(n, FPS, seed=1)) and not np.array_equal(a, head_schedule(n, FPS, seed=2))
    assert a.shape == (n, 4) and a.dtype == np.float32
    for j, key in enumerate(("x", "y", "roll")):  # real talking heads: x, y 0.010-0.041 IOD, roll 0.17-1.5 degrees
        assert 0.6 * TARGET_STD[key] < a[:, j].std() < 1.5 * TARGET_STD[key], (key, a[:, j].std())
    assert np.abs(np.diff(a[:, 0])).max() < 0.01  # smooth: under 1 % of the eye distance a frame
    assert not head_schedule(100, FPS, seed=1, amplitude=0.0).any()
    np.testing.assert_allclose(head_schedule(100, FPS, seed=1, amplitude=2.0), 2 * head_schedule(100, FPS, seed=1), rtol=1e-6)
    # Loud bursts every second after quiet: each is followed by a downward dip (a nod).
    db = np.full(250, -60.0)
    for s in range(10, 250, 25):
        db[s: s + 8] = -10.0
    nodding = head_schedule(250, FPS, db, seed=1)
    plain = head_schedule(250, FPS, None, seed=1)
    dip = nodding[:, 1] - plain[:, 1]
    peaks = [int(np.argmax(dip[s: s + 12])) + s for s in range(10, 240, 25)]
    assert all(dip[p] > 0.8 * NOD_DEPTH for p in peaks), dip[peaks]
    assert all(s + 1 <= p <= s + 6 for s, p in zip(range(10, 240, 25), peaks))


def face_landmarks(h=400, w=320):
    """478 landmarks spread over a face-sized oval, the eyes and chin where the warp reads them."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2 * np.pi, 478)
    r = np.sqrt(rng.uniform(0, 1, 478))
    lm = np.stack([w / 2 + 70 * r * np.cos(a), h / 2 + 95 * r * np.sin(a)], 1).astype(np.float32)
    lm[33], lm[263], lm[152] = (w / 2 - 35, h / 2 - 20), (w / 2 + 35, h / 2 - 20), (w / 2, h / 2 + 95)
    return lm


def test_warp_moves_only_the_head_and_never_folds():
    h, w = 400, 320
    img = (np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8)
    warp = HeadWarp(face_landmarks(h, w), img.shape)
    x0, y0, x1, y1 = warp.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    sched = head_schedule(int(60 * FPS), FPS, seed=0, amplitude=3.0)  # three times the default
    assert not any(warp.folds(p) for p in sched[::10])
    moved = warp.draw(img, sched[40])
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(moved[outside], img[outside])
    assert np.abs(moved.astype(int) - img).max() > 0
    # A pure shift of 0.02 IOD moves the face's centre by that many pixels and the far corners not at all.
    maps = warp.maps(np.array([0.02, 0.0, 0.0, 0.0]))
    cy, cx = h // 2 - y0, w // 2 - x0
    assert abs((cx + x0 - maps[0][cy, cx]) - 0.02 * warp.iod) < 1e-3
    assert maps[0][0, 0] == pytest.approx(x0, abs=1e-4)


@pytest.fixture(scope="module")
def photo_and_speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("head")
    frames, audio = read_video(GRID, sample_rate=16000)
    Image.fromarray(frames[0]).save(d / "face.png")
    sf.write(d / "speech.wav", audio[: 16000 * 2], 16000)
    torch.manual_seed(0)
    cfg = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
    return d / "face.png", d / "speech.wav", api.Model(Generator(cfg).eval(), cfg, {})


def test_generate_moves_the_head_on_photos_only_when_asked(photo_and_speech, tmp_path):
    face, speech, model = photo_and_speech
    kw = dict(model=model, progress=False, blinks=False)
    still = np.stack(api.generate(face, speech, **kw, still=True))
    default = np.stack(api.generate(face, speech, **kw))
    none = np.stack(api.generate(face, speech, **kw, head_motion=0))
    assert np.array_equal(still, none)
    moved = np.abs(default.astype(int) - still.astype(int)).max(axis=(1, 2, 3)) > 0
    assert moved.mean() > 0.8  # the head moves in nearly every frame
    assert np.array_equal(default, np.stack(api.generate(face, speech, **kw)))  # the same seed, the same motion
    more = np.abs(np.stack(api.generate(face, speech, **kw, head_motion=2.0)).astype(int) - still).mean()
    assert more > np.abs(default.astype(int) - still).mean()
    for bad in (-1, 4, float("nan"), "much"):
        with pytest.raises(ValueError, match="head_motion"):
            api.generate(face, speech, **kw, head_motion=bad)
    args = build_parser().parse_args(["generate", "--face", "f.png", "--audio", "a.wav", "-o", "o.mp4", "--head-motion", "0.5"])
    assert args.head_motion == 0.5 and args.still is False
    # A written video of a moving head decodes and keeps its size (the encoder is told which box changed).
    out = api.generate(face, speech, tmp_path / "o.mp4", **kw)
    frames, _ = read_video(out, sample_rate=None)
    assert frames.shape[1:] == still.shape[1:] and abs(len(frames) - len(still)) <= 1
    psnr = 10 * np.log10(255**2 / np.mean((frames[: len(default)].astype(float) - default[: len(frames)]) ** 2))
    assert psnr > 33, psnr
