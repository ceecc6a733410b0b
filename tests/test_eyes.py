"""Blinks: a schedule with a talking person's rate and durations, deterministic under its seed and
drawn toward pauses; upper lids that move down over the eye (not a cross-fade); none for closed
eyes; ``still`` and ``blinks=False`` leave the eyes exactly as in the photo."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkingface import api
from talkingface.config import AudioEncoderConfig, GeneratorConfig, IdentityEncoderConfig
from talkingface.eyes import LOWER_LIDS, UPPER_LIDS, EyeLids, blink_schedule, eye_openness
from talkingface.media import read_video
from talkingface.models.generator import Generator

GRID = Path(__file__).parent / "data/grid/s1/bbaf2n.mp4"
FPS = 25.0


def blinks_of(closure):
    """(start frame, length in frames) of every blink in a closure track."""
    on = np.concatenate([[0], (closure > 0).astype(int), [0]])
    starts, ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    return list(zip(starts, ends - starts))


def test_schedule_rate_duration_determinism_and_pauses():
    n = int(10 * 60 * FPS)  # ten minutes
    a, b = blink_schedule(n, FPS, seed=3), blink_schedule(n, FPS, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, blink_schedule(n, FPS, seed=4))
    found = blinks_of(a)
    assert 100 <= len(found) <= 300  # 10-30 a minute
    lengths_ms = np.array([k for _, k in found]) / FPS * 1000
    assert lengths_ms.min() >= 80 and lengths_ms.max() <= 320  # 100-300 ms, give or take a frame
    assert a.max() <= 1.0 and a.max() > 0.85 and a.min() == 0.0
    # Speech with a 0.4 s pause every 2 s: blinks land in the pauses far more often than chance (20 %;
    # ~55 % expected: seven in ten seek a pause, found when one is within 0.5 s).
    t = np.arange(n) / FPS
    speaking = (t % 2.0) < 1.6
    starts = [s for s, _ in blinks_of(blink_schedule(n, FPS, speaking, seed=3))]
    in_pause = np.mean([not speaking[s] for s in starts])
    assert in_pause > 0.4, in_pause


def synthetic_eye(h=120, w=160):
    """A flat skin image with one eye: a dark iris band between the lids and a black lash line
    along the upper lid (row 50); lower lid at row 70; 478 landmarks with the lids where drawn."""
    img = np.full((h, w, 3), 180, np.uint8)
    img[51:70, 50:110] = (40, 60, 200)  # the eye
    img[48:51, 45:115] = 0  # the upper lid's lashes
    lm = np.zeros((478, 2), np.float32)
    for lids, y in ((UPPER_LIDS, 49.5), (LOWER_LIDS, 70.0)):
        for ids in lids:
            xs = np.linspace(45, 115, len(ids))
            lm[ids, 0] = xs
            lm[ids, 1] = y
            lm[ids[0], 1] = lm[ids[-1], 1] = 60.0  # the corners between the lids
    return img, lm


def test_upper_lid_moves_down_over_the_eye():
    img, lm = synthetic_eye()
    lids = EyeLids(lm, img.shape)
    assert lids.open and eye_openness(lm) > 0.2
    assert lids.draw(img, 0.0) is img
    shut = lids.draw(img, 1.0)
    col = shut[:, 80]
    # The lash line has moved from row ~50 to the lower lid (~row 70), and the eye above it is
    # covered by skin, not faded: no iris colour is left between the old and the new lid row.
    dark = np.flatnonzero(col.max(axis=1) < 30)
    assert dark.size and 64 <= dark.mean() <= 72, dark
    assert (col[52:62, 2] < 150).sum() == 0  # no blue iris rows left above the new lid
    half = lids.draw(img, 0.5)[:, 80]
    dark_half = np.flatnonzero(half.max(axis=1) < 30)
    assert 56 <= dark_half.mean() <= 64, dark_half  # half way down
    assert (half[66:70, 2] > 150).all()  # the eye still shows below a half-closed lid
    # Nothing outside the eye region changes.
    diff = np.abs(shut.astype(int) - img.astype(int)).max(axis=2)
    ys, xs = np.nonzero(diff)
    assert ys.max() <= 75 and xs.min() >= 35 and xs.max() <= 125


def test_closed_eyes_get_no_blinks():
    img, lm = synthetic_eye()
    for lo in LOWER_LIDS:
        lm[lo[1:-1], 1] = 50.5  # the lower lid up against the upper one: shut
    lids = EyeLids(lm, img.shape)
    assert not lids.open
    assert lids.draw(img, 1.0) is img


@pytest.fixture(scope="module")
def photo_and_speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("eyes")
    frames, audio = read_video(GRID, sample_rate=16000)
    Image.fromarray(frames[0]).save(d / "face.png")
    sf.write(d / "speech.wav", audio, 16000)  # 3 s
    torch.manual_seed(0)
    cfg = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
    return d / "face.png", d / "speech.wav", api.Model(Generator(cfg).eval(), cfg, {}), frames[0]


def test_generate_blinks_on_photos_and_still_keeps_the_eyes(photo_and_speech):
    face, speech, model, photo = photo_and_speech
    still = np.stack(api.generate(face, speech, model=model, progress=False, still=True))
    no_blinks = np.stack(api.generate(face, speech, model=model, progress=False, blinks=False, head_motion=0))
    assert np.array_equal(still, no_blinks)
    # Everything above the nose is the photo itself (the mouth box starts lower).
    nose_y = api.prepare_inputs(face, speech, model.config.crop_size).landmarks[4, 1]  # the nose tip
    top = slice(0, int(nose_y) - 4)
    assert np.array_equal(still[:, top], np.repeat(photo[None, top], len(still), 0))
    seeds = {}
    for seed in (0, 1, 2):
        blinking = np.stack(api.generate(face, speech, model=model, progress=False, seed=seed, head_motion=0))
        changed = np.abs(blinking[:, top].astype(int) - still[:, top].astype(int)).max(axis=(1, 2, 3))
        seeds[seed] = np.flatnonzero(changed)
    assert any(len(v) for v in seeds.values()), seeds  # 3 s x 3 seeds: some blink
    again = np.stack(api.generate(face, speech, model=model, progress=False, seed=0, head_motion=0))
    changed = np.abs(again[:, top].astype(int) - still[:, top].astype(int)).max(axis=(1, 2, 3))
    assert np.array_equal(np.flatnonzero(changed), seeds[0])  # the same seed blinks at the same frames
