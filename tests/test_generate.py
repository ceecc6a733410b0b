"""Generation end to end (API and CLI) with a tiny random generator exported to a checkpoint: output
format and timing, untouched background, determinism, streaming, odd but valid inputs, and clean
one-line failures that leave nothing behind."""

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkingface import api
from talkingface.cli import build_parser, main
from talkingface.config import (
    AudioEncoderConfig,
    GeneratorConfig,
    IdentityEncoderConfig,
)
from talkingface.errors import TalkingFaceError
from talkingface.inference import compute_dtype
from talkingface.media import read_audio, read_video, write_video
from talkingface.models.generator import Generator
from talkingface.training.checkpoint import export_model

DATA = Path(__file__).parent / "data"
GRID = DATA / "grid/s1/bbaf2n.mp4"
TINY_G = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
SR = 16000


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A photo (a GRID frame, 360x288), 1 s of its speech, and a tiny generator checkpoint whose
    output layers are nudged off their "copy the photo" initialisation so frames really change."""
    d = tmp_path_factory.mktemp("gen_assets")
    frames, audio = read_video(GRID, sample_rate=SR)
    photo = frames[0]
    Image.fromarray(photo).save(d / "face.png")
    speech = audio[8000:24000]  # 1.0 s with speech in it
    sf.write(d / "speech.wav", speech, SR)
    sf.write(d / "short.wav", audio[12000:18400], SR)  # 0.4 s: 10 frames, for the many odd inputs
    torch.manual_seed(0)
    g = Generator(TINY_G)
    with torch.no_grad():
        for p in list(g.motion_head[-1].parameters()) + [g.out[-1].weight]:
            p.normal_(0, 0.02)
    export_model(d / "tiny.pt", "generator", g, TINY_G, {"note": "random init, for tests"})
    return {"dir": d, "face": d / "face.png", "speech": d / "speech.wav", "short": d / "short.wav",
            "ckpt": d / "tiny.pt", "photo": photo, "frames": frames, "audio": audio}


@pytest.fixture(scope="module")
def model(assets):
    return api.load_model(assets["ckpt"])


def decode(path):
    """(frames (N, H, W, 3) uint8, average fps, audio codec names, audio seconds)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        codecs = [s.codec_context.name for s in c.streams.audio]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    audio_s = len(read_audio(path, SR)) / SR if codecs else 0.0
    return frames, fps, codecs, audio_s


def expected_frames(audio_path):
    info = sf.info(str(audio_path))
    return round(info.frames / info.samplerate * 25)


# ----------------------------------------------------------------------------------------------
# API


def where_different(a: np.ndarray, b: np.ndarray) -> str:
    """Where two (N, H, W, 3) frame stacks differ, for a failure message."""
    d = np.abs(a.astype(int) - b.astype(int)).max(-1)
    n, ys, xs = np.nonzero(d)
    if not len(n):
        return "identical"
    return (f"{len(np.unique(n))} of {len(a)} frames differ (first {n.min()}), max {d.max()}, mean {d.mean():.4f}, "
            f"rows {ys.min()}-{ys.max()}, cols {xs.min()}-{xs.max()}")


def test_generate_mp4_format_background_and_determinism(assets, model, tmp_path):
    out_a, out_b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert api.generate(assets["face"], assets["speech"], out_a, model=model, seed=3, progress=False) == out_a
    api.generate(assets["face"], assets["speech"], out_b, model=model, seed=3, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]  # no temp files left
    fa, fps, codecs, audio_s = decode(out_a)
    fb, *_ = decode(out_b)
    assert fps == 25.0
    assert abs(len(fa) - expected_frames(assets["speech"])) <= 1
    assert fa.shape[1:] == assets["photo"].shape  # 288 x 360, already even
    assert codecs == ["aac"] and abs(audio_s - 1.0) < 0.1
    # Same inputs, same video. Checked on the frames before encoding, then on the two files. One CI
    # run (not reproduced here in dozens of tries) once saw the two files differ: float kernels
    # may round differently between runs on some CPUs, so a level here and there is tolerated,
    # reported as a warning that says where; a real defect (a stale or swapped frame) is not.
    raw = np.stack(api.generate(assets["face"], assets["speech"], None, model=model, seed=3, progress=False))
    again = np.stack(api.generate(assets["face"], assets["speech"], None, model=model, seed=3, progress=False))
    for x, y, what in ((raw, again, "frames"), (fa, fb, "mp4 files")):
        if not np.array_equal(x, y):
            warnings.warn(f"same-seed {what} differ: {where_different(x, y)}")
        d = np.abs(x.astype(int) - y.astype(int))
        assert d.mean() < 0.05 and np.percentile(d, 99.9) <= 2, where_different(x, y)
    # the file holds those frames up to H.264 loss (crf 18), mouth included
    psnr = 10 * np.log10(255**2 / np.mean((fa[:, 190:260, 90:230].astype(float) - raw[:, 190:260, 90:230]) ** 2))
    assert psnr > 35, psnr
    # far from the face (box about x 100-206, y 117-251) the photo is untouched, up to H.264 loss
    corner = np.abs(fa[:, :60, :60].astype(float) - assets["photo"][None, :60, :60]).mean()
    assert corner < 3, corner
    # while the lower face is the (random) generator's work
    lower = np.abs(fa[:, 190:260, 90:230].astype(float) - assets["photo"][None, 190:260, 90:230]).mean()
    assert lower > 2, lower


def test_stream_and_frame_list(assets, model):
    streamed = list(api.stream(assets["face"], assets["short"], model=model, still=True))
    assert len(streamed) == expected_frames(assets["short"]) == 10
    assert all(f.shape == assets["photo"].shape and f.dtype == np.uint8 for f in streamed)
    listed = api.generate(assets["face"], assets["short"], out=None, model=model, progress=False, still=True)
    assert isinstance(listed, list) and len(listed) == 10
    assert all(np.array_equal(a, b) for a, b in zip(streamed, listed))
    # uncompressed and --still, the photo outside the lower face is bit-exact
    assert np.array_equal(listed[5][:100], assets["photo"][:100])
    assert np.array_equal(listed[5][:, :60], assets["photo"][:, :60])


def test_precision_bf16_stays_close_to_fp32_and_bad_values_fail(assets, model):
    """bfloat16 (what "auto" picks on CPUs with AMX) may move the mouth by a level or two, never
    more; the photo outside the edit is untouched either way."""
    a = api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32", still=True)
    b = api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="bf16", still=True)
    d = np.abs(np.stack(a).astype(int) - np.stack(b))
    assert d.max() <= 12 and d.mean() < 0.05, (d.max(), d.mean())
    assert np.array_equal(b[3][:100], assets["photo"][:100])
    assert compute_dtype("fp32") is None and compute_dtype("bf16") == torch.bfloat16
    assert compute_dtype("auto", "cuda") is None
    with pytest.raises(ValueError, match="precision"):
        api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp16")


def test_articulation_moves_the_mouth_more_and_bad_values_fail(assets, model):
    """A larger articulation changes the mouth region only; out-of-range values fail before any work."""
    a = np.stack(api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32"))
    b = np.stack(api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32",
                              articulation=2.0))
    assert np.abs(a.astype(int) - b).max() > 0
    assert np.array_equal(b[:, :100], a[:, :100])  # the photo above the face is untouched
    for bad in (-0.5, 3.5, float("nan")):
        with pytest.raises(ValueError, match="articulation"):
            api.generate(assets["face"], assets["short"], None, model=model, progress=False, articulation=bad)
    assert build_parser().parse_args(gen_args(assets, None, None, "o.mp4", "--articulation", "1.5")).articulation == 1.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(gen_args(assets, None, None, "o.mp4", "--articulation", "9"))


def test_keep_expression_changes_only_the_mouth_and_reaches_the_cli(assets, model):
    """--keep-expression draws the photo's mouth as the rest: a different mouth, the same photo
    elsewhere; on by default (API and CLI), --no-keep-expression turns it off."""
    a = np.stack(api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32",
                              keep_expression=False))
    b = np.stack(api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32",
                              keep_expression=True))
    default = np.stack(api.generate(assets["face"], assets["short"], None, model=model, progress=False, precision="fp32"))
    assert np.abs(a.astype(int) - b).max() > 0
    assert np.array_equal(b[:, :100], a[:, :100])
    assert np.array_equal(default, b)
    assert build_parser().parse_args(gen_args(assets, None, None, "o.mp4")).keep_expression is True
    assert build_parser().parse_args(gen_args(assets, None, None, "o.mp4", "--no-keep-expression")).keep_expression is False
    ev = ["evaluate", "--corpus", "c", "--split", "test"]
    assert build_parser().parse_args(ev).keep_expression is True
    assert build_parser().parse_args(ev + ["--no-keep-expression"]).keep_expression is False


def test_on_progress_counts_every_frame(assets, model, tmp_path):
    seen = []
    api.generate(assets["face"], assets["short"], tmp_path / "o.mp4", model=model, progress=False,
                 on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 10) for k in range(11)]  # (0, 10) once the inputs are read, then per frame written
    seen.clear()
    frames = api.generate(assets["face"], assets["short"], None, model=model, progress=False,
                          on_progress=lambda done, total: seen.append((done, total)))
    assert len(frames) == 10 and seen == [(k, 10) for k in range(11)]


def test_keyboard_interrupt_leaves_no_output(assets, model, tmp_path, monkeypatch):
    from talkingface import compose

    calls = {"n": 0}
    real = compose.Compositor.compose

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(compose.Compositor, "compose", flaky)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "talk.mp4"
    with pytest.raises(KeyboardInterrupt):
        api.generate(assets["face"], assets["speech"], out, model=model, progress=False)
    assert calls["n"] == 5 and os.listdir(out_dir) == []
    # an existing output is left as it was
    out.write_bytes(b"old")
    calls["n"] = 0
    rc, err = run_cli(["generate", "-q", "--face", str(assets["face"]), "--audio", str(assets["speech"]), "-o", str(out),
                       "--checkpoint", str(assets["ckpt"])])
    assert rc == 130 and "interrupted" in err
    assert os.listdir(out_dir) == ["talk.mp4"] and out.read_bytes() == b"old"


def test_shipped_checkpoint(assets, tmp_path):
    if not api.default_checkpoint().is_file():
        pytest.skip("no shipped checkpoint in this checkout yet")
    frames = api.generate(assets["face"], assets["short"], out=None, progress=False)
    assert len(frames) == 10 and frames[0].shape == assets["photo"].shape


# ----------------------------------------------------------------------------------------------
# CLI


_capfd = None


@pytest.fixture(autouse=True)
def _cli_capture(capfd):
    global _capfd
    _capfd = capfd
    yield
    _capfd = None


def run_cli(argv):
    """Run the CLI in this process; returns (exit code, what it wrote to stderr)."""
    _capfd.readouterr()
    rc = main(argv)
    return rc, _capfd.readouterr().err


def gen_args(assets, face=None, audio=None, out=None, *extra):
    return ["generate", "-q", "--face", str(face or assets["face"]), "--audio", str(audio or assets["short"]),
            "-o", str(out), "--checkpoint", str(assets["ckpt"]), *extra]


def _noise(path, size=(160, 200)):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _bytes(path, data):
    Path(path).write_bytes(data)
    return path


BAD = {
    "no face": lambda a, d: {"face": _noise(d / "noise.png")},
    "corrupt image": lambda a, d: {"face": _bytes(d / "bad.jpg", np.random.default_rng(1).bytes(3000))},
    "zero-byte image": lambda a, d: {"face": _bytes(d / "empty.png", b"")},
    "missing image": lambda a, d: {"face": d / "missing.jpg"},
    "corrupt video as face": lambda a, d: {"face": _bytes(d / "bad.mp4", np.random.default_rng(2).bytes(3000))},
    "text file as face": lambda a, d: {"face": _bytes(d / "face.txt", b"hello\n")},
    "zero-byte audio": lambda a, d: {"audio": _bytes(d / "empty.wav", b"")},
    "corrupt audio": lambda a, d: {"audio": _bytes(d / "bad.wav", b"RIFF" + np.random.default_rng(3).bytes(3000))},
    "silent audio": lambda a, d: (sf.write(d / "silence.wav", np.zeros(SR, np.float32), SR), {"audio": d / "silence.wav"})[1],
    "audio without audio track": lambda a, d: (write_video(d / "mute.mp4", a["frames"][:5]), {"audio": d / "mute.mp4"})[1],
    "face index out of range": lambda a, d: {"extra": ["--face-index", "5"]},
    "output parent is a file": lambda a, d: {"out": _bytes(d / "file.txt", b"x") / "out.mp4"},
    "output folder missing": lambda a, d: {"out": d / "missing" / "out.mp4"},
    "output is a folder": lambda a, d: {"out": d},
    "output is the audio input": lambda a, d: (shutil.copy(a["short"], d / "speech.wav"),
                                               {"audio": d / "speech.wav", "out": d / "speech.wav"})[1],
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_input_one_line_error_and_nothing_written(assets, tmp_path, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = BAD[case](assets, inputs if "output" not in case else out_dir)
    out = spec.get("out", out_dir / "talk.mp4")
    before = {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    rc, err = run_cli(gen_args(assets, spec.get("face"), spec.get("audio"), out, *spec.get("extra", [])))
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    after = {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no output, no temp file, inputs untouched


def test_cli_real_process_stderr_is_one_line(assets, tmp_path):
    """As users see it: native MediaPipe/TFLite chatter must not surround the error line."""
    face = _noise(tmp_path / "noise.png")
    r = subprocess.run([sys.executable, "-m", "talkingface.cli", *gen_args(assets, face, None, tmp_path / "o.mp4")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {face}: no face found in the photo"], r.stderr
    assert sorted(os.listdir(tmp_path)) == ["noise.png"]


def test_cli_without_mediapipe_names_the_install_command(assets, tmp_path, monkeypatch):
    """After a plain `pip install -e .` (no MediaPipe) generate fails with one line that says what to install."""
    from talkingface.face import MEDIAPIPE_INSTALL

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    rc, err = run_cli(gen_args(assets, None, None, tmp_path / "o.mp4"))
    assert rc == 2
    assert err.strip().splitlines() == [f"error: MediaPipe is not installed: {MEDIAPIPE_INSTALL}"]
    assert not list(tmp_path.iterdir())


def _two_faces(assets, path):
    import cv2

    face = assets["photo"][20:280, 60:300]
    small = cv2.resize(face, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.full((260, 260 + small.shape[1], 3), 128, np.uint8)
    canvas[:, :240] = face
    canvas[40:40 + small.shape[0], 260:260 + small.shape[1]] = small
    Image.fromarray(canvas).save(path)
    return path


def test_cli_several_faces(assets, model, tmp_path, caplog):
    face = _two_faces(assets, tmp_path / "two.png")
    caplog.set_level(logging.WARNING, logger="talkingface")
    rc, err = run_cli(gen_args(assets, face, None, tmp_path / "o0.mp4"))
    assert rc == 0, err
    assert "2 faces found" in caplog.text and "--face-index" in caplog.text
    rc, err = run_cli(gen_args(assets, face, None, tmp_path / "o1.mp4", "--face-index", "1"))
    assert rc == 0, err
    f0, *_ = decode(tmp_path / "o0.mp4")
    f1, *_ = decode(tmp_path / "o1.mp4")
    assert f0.shape == f1.shape == (10, 260, 260 + 144, 3)
    assert "index 1 (0 = the largest)" in caplog.text
    # index 0 animates the large face (left), index 1 the small one (right); uncompressed frames
    # are bit-exact outside the animated face
    photo = np.asarray(Image.open(face).convert("RGB"))
    for index, (animated, still) in enumerate([(np.s_[:, :240], np.s_[:, 250:]), (np.s_[:, 250:], np.s_[:, :250])]):
        frames = api.generate(face, assets["short"], None, model=model, face_index=index, progress=False)
        moved = np.stack([np.any(f != photo, -1) for f in frames]).any(0)
        assert moved[animated].sum() > 200 and moved[still].sum() == 0, index


# ----------------------------------------------------------------------------------------------
# Odd inputs that must work


def _photo_variant(assets, d, kind):
    im = Image.fromarray(assets["photo"])
    if kind == "grayscale":
        im.convert("L").save(d / "gray.png")
        return d / "gray.png", (288, 360)
    if kind == "rgba":
        rgba = im.convert("RGBA")
        alpha = np.full((288, 360), 255, np.uint8)
        alpha[:40, :40] = 0  # a transparent corner: composited over white
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(d / "rgba.png")
        return d / "rgba.png", (288, 360)
    if kind == "odd-size":
        im.crop((30, 10, 331, 267)).save(d / "odd.jpg", quality=95)  # 301 x 257
        return d / "odd.jpg", (256, 300)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "odd-size"])
def test_odd_photos_work(assets, model, tmp_path, kind):
    face, (h, w) = _photo_variant(assets, tmp_path, kind)
    out = tmp_path / "o.mp4"
    api.generate(face, assets["short"], out, model=model, progress=False)
    frames, fps, codecs, _ = decode(out)
    assert frames.shape == (10, h, w, 3) and fps == 25.0 and codecs == ["aac"]
    if kind == "grayscale":  # still gray: no colour appears anywhere
        rgb = frames[3].astype(int)
        assert np.abs(rgb[..., 0] - rgb[..., 1]).mean() < 3
    if kind == "rgba":
        assert frames[3, :30, :30].mean() > 240  # the transparent corner is white


def _encode_audio(path, audio, rate, layout="mono", codec="aac"):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = layout
        chans = 2 if layout == "stereo" else 1
        data = np.ascontiguousarray(np.tile(audio[None], (chans, 1)).astype(np.float32))
        fmt = "fltp"
        step = 1152
        for i in range(0, data.shape[1], step):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i:i + step]), format=fmt, layout=layout)
            fr.sample_rate = rate
            fr.pts = i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _resampled(assets, rate, seconds=0.4):
    x = assets["audio"][12000:12000 + int(SR * seconds)]
    t_new = np.arange(int(len(x) * rate / SR)) / rate
    return np.interp(t_new, np.arange(len(x)) / SR, x).astype(np.float32)


AUDIO = {
    "wav 8 kHz": lambda a, d: (sf.write(d / "a8k.wav", _resampled(a, 8000), 8000), d / "a8k.wav")[1],
    "wav 48 kHz stereo": lambda a, d: (sf.write(d / "a48k.wav", np.stack([_resampled(a, 48000)] * 2, 1), 48000),
                                       d / "a48k.wav")[1],
    "mp3": lambda a, d: _encode_audio(d / "a.mp3", _resampled(a, 44100), 44100, "stereo", "libmp3lame"),
    "m4a": lambda a, d: _encode_audio(d / "a.m4a", _resampled(a, 44100), 44100, "mono", "aac"),
    "mp4 video's audio": lambda a, d: (write_video(d / "clip.mp4", a["frames"][:10], audio=a["audio"][12000:18400],
                                                   sample_rate=SR), d / "clip.mp4")[1],
}


@pytest.mark.parametrize("case", list(AUDIO))
def test_audio_formats_work(assets, model, tmp_path, case):
    audio = AUDIO[case](assets, tmp_path)
    out = tmp_path / "o.mp4"
    api.generate(assets["face"], audio, out, model=model, progress=False)
    frames, fps, codecs, audio_s = decode(out)
    # compressed formats pad a few ms (encoder delay): allow one frame either way
    assert abs(len(frames) - 10) <= 1 and fps == 25.0 and codecs == ["aac"]
    assert abs(audio_s - 0.4) < 0.1


def test_video_as_face_dubs_it(assets, model, tmp_path):
    """A video as --face: the face is tracked in every frame, the video plays back and forth to
    cover longer speech, and the output has the video's size."""
    video = tmp_path / "face.mp4"
    write_video(video, assets["frames"][:6])  # 6 frames for 10 frames of speech: ping-pong
    out = tmp_path / "o.mp4"
    api.generate(video, assets["short"], out, model=model, progress=False)
    frames, fps, codecs, _ = decode(out)
    assert frames.shape == (10, 288, 360, 3) and fps == 25.0 and codecs == ["aac"]
    src, *_ = decode(video)
    order = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1]  # forwards, then backwards
    for k, i in enumerate(order):  # far from the face: the source frame, up to H.264 loss
        assert np.abs(frames[k, :60, :60].astype(float) - src[i, :60, :60]).mean() < 3
    with pytest.raises(TalkingFaceError):
        api.generate(_bytes(tmp_path / "bad.mov", b"\0" * 100), assets["short"], tmp_path / "x.mp4", model=model,
                     progress=False)
    assert not (tmp_path / "x.mp4").exists()


def test_video_tracking_on_every_other_frame_matches_every_frame(assets, tmp_path):
    """Dubbing finds landmarks on every 2nd frame only; the interpolated, smoothed alignments stay
    within a pixel of tracking every frame, and a frame between two faceless frames has no face."""
    from talkingface.config import FaceConfig

    frames = assets["frames"][:13].copy()
    frames[10:] = 0  # the face leaves the picture for the last three frames
    video = tmp_path / "face.mp4"
    write_video(video, frames, crf=10)
    cfg = FaceConfig()
    every = api._video(video, cfg, 25.0, detect_every=1)[3](13)
    half = api._video(video, cfg, 25.0, detect_every=2)[3](13)
    for k, ((_, m1), (_, m2)) in enumerate(zip(every, half)):
        if k >= 10:
            assert m1 is None and m2 is None
            continue
        corners = np.array([[0, 0, 1], [128, 128, 1]], np.float64)
        # where the crop's corners land in the frame, both ways
        p1 = corners @ np.linalg.inv(np.vstack([m1, [0, 0, 1]])).T
        p2 = corners @ np.linalg.inv(np.vstack([m2, [0, 0, 1]])).T
        assert np.abs(p1 - p2).max() < 1.5, k


def test_crf_and_preset_reach_the_encoder(assets, model, tmp_path):
    """--crf trades size for quality; a named x264 preset replaces the fast default; both decode."""
    sizes = {}
    for name, kw in {"default": {}, "crf35": {"crf": 35}, "veryfast": {"preset": "veryfast"}}.items():
        out = api.generate(assets["face"], assets["speech"], tmp_path / f"{name}.mp4", model=model, progress=False, **kw)
        frames, fps, codecs, _ = decode(out)
        assert len(frames) == 25 and fps == 25 and codecs == ["aac"]
        sizes[name] = out.stat().st_size
    assert sizes["crf35"] < sizes["default"]
    assert sizes["veryfast"] != sizes["default"]
    r = subprocess.run([sys.executable, "-m", "talkingface.cli", "generate", "--face", str(assets["face"]), "--audio",
                        str(assets["speech"]), "-o", str(tmp_path / "x.mp4"), "--crf", "60"], capture_output=True, text=True)
    assert r.returncode == 2 and "0..51" in r.stderr and not (tmp_path / "x.mp4").exists()
