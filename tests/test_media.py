"""talkingface.media: decoding, resampling by timestamp, atomic writing, images, bad input.

Every input other than the clips in tests/data is generated here with PyAV, soundfile or Pillow.
"""

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from talkingface import media
from talkingface.errors import TalkingFaceError
from talkingface.media import (
    check_writable,
    iter_video,
    probe_video,
    read_audio,
    read_image,
    read_video,
    write_video,
)

SR = 16000
DATA = Path(__file__).parent / "data"
GRID_CLIP = DATA / "grid" / "s1" / "bbaf2n.mp4"
CREMA_CLIP = DATA / "crema-d" / "1001" / "1001_DFA_NEU_XX.mp4"


# ----------------------------------------------------------------------------------------------
# Helpers


def _require_encoder(name: str) -> None:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        pytest.skip(f"PyAV/FFmpeg build has no {name} encoder")


def _encode_audio(path, fmt, codec, rate, x, options=None):
    """Mono float32 ``x`` -> an audio-only file through PyAV."""
    _require_encoder(codec)
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = "mono"
        if options:
            s.codec_context.options = options
        media._encode_audio(out, s, np.asarray(x, np.float32), rate)


def _gray(k: int) -> int:
    return 16 + 6 * k  # source frame k is filled with this grey value (k < 40)


def _gray_index(frame: np.ndarray) -> int:
    assert frame.std() < 2.0, "a flat source frame came back textured"
    return int(round((float(frame.mean()) - 16) / 6))


def _write_gray_video(path, pts, time_base, fmt="mp4", size=(64, 48)):
    """Frame k is flat grey _gray(k), shown at pts[k] * time_base (any spacing: VFR allowed)."""
    w, h = size
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = time_base
        s.codec_context.time_base = time_base
        s.options = {"crf": "10", "preset": "ultrafast"}
        for k, pt in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), _gray(k), np.uint8), format="rgb24")
            frame.pts = int(pt)
            frame.time_base = time_base
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def _expected_source(times, n_out, fps=25):
    """For each output frame j: the last source frame whose timestamp is <= j / fps."""
    return [max(k for k, t in enumerate(times) if t <= Fraction(j, fps)) for j in range(n_out)]


def _smooth_frames(n, h=96, w=128):
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        r = 128 + 60 * np.sin(2 * np.pi * (xx / w + k / 50))
        g = 128 + 60 * np.cos(2 * np.pi * (yy / h - k / 40))
        b = 60 + 0.8 * xx + 0 * yy
        yield np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def _peak_hz(y, rate=SR):
    mid = y[len(y) // 4: len(y) // 4 + rate // 2]  # 0.5 s from the middle, away from codec edges
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), n=8 * len(mid)))
    return np.fft.rfftfreq(8 * len(mid), 1 / rate)[np.argmax(spec)]


def _mid_rms(y):
    return float(np.sqrt(np.mean(y[len(y) // 4: 3 * len(y) // 4] ** 2)))


def _assert_one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg, msg


# ----------------------------------------------------------------------------------------------
# Reading real clips


def test_read_video_grid_clip():
    frames, audio = read_video(GRID_CLIP)
    assert frames.shape == (75, 288, 360, 3)
    assert frames.dtype == np.uint8
    assert frames.std() > 10  # a real picture, not a constant
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SR - 3.0) < 0.05
    assert -1.0 <= audio.min() and audio.max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # speech, not silence


def test_probe_video_grid_clip():
    info = probe_video(GRID_CLIP)
    assert (info.width, info.height) == (360, 288)
    assert info.source_fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.has_audio


def test_crema_2997_fps_to_25_by_timestamp():
    info = probe_video(CREMA_CLIP)
    assert info.source_fps == pytest.approx(30000 / 1001)
    frames = list(iter_video(CREMA_CLIP, fps=25.0))
    assert abs(len(frames) - round(61 / (30000 / 1001) * 25)) <= 1
    assert frames[0].shape == (360, 480, 3)


# ----------------------------------------------------------------------------------------------
# Frame-rate conversion by timestamp (content checked)


def test_30fps_to_25fps_picks_last_frame_at_or_before(tmp_path):
    path = tmp_path / "cfr30.mp4"
    n_src = 36  # 1.2 s
    _write_gray_video(path, range(n_src), Fraction(1, 30))
    out = list(iter_video(path, fps=25))
    assert abs(len(out) - round(n_src / 30 * 25)) <= 1
    got = [_gray_index(f) for f in out]
    assert got == _expected_source([Fraction(k, 30) for k in range(n_src)], len(out))
    # 30 -> 25 fps drops exactly one source frame in six
    assert sorted(set(range(n_src)) - set(got)) == [k for k in range(n_src) if k % 6 == 5]


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_variable_frame_rate_by_timestamp(tmp_path, fmt):
    rng = np.random.default_rng(3)
    pts_ms = np.cumsum(np.r_[0, rng.integers(8, 95, size=30)]).tolist()  # irregular, 1/1000 s
    path = tmp_path / f"vfr.{'mkv' if fmt == 'matroska' else fmt}"
    _write_gray_video(path, pts_ms, Fraction(1, 1000), fmt=fmt)
    out = list(iter_video(path, fps=25))
    n_min = pts_ms[-1] // 40 + 1  # every output time up to the last source frame's timestamp
    assert n_min <= len(out) <= n_min + 3
    got = [_gray_index(f) for f in out]
    assert got == _expected_source([Fraction(t, 1000) for t in pts_ms], len(out))


# ----------------------------------------------------------------------------------------------
# Writing


def test_write_read_round_trip(tmp_path, tone):
    path = tmp_path / "out.mp4"
    frames = list(_smooth_frames(50))
    sine = tone(SR, 2.0)
    assert write_video(path, iter(frames), fps=25, audio=sine, sample_rate=SR) == 50

    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert float(c.streams.video[0].average_rate) == pytest.approx(25.0)
    info = probe_video(path)
    assert info.source_fps == pytest.approx(25.0)
    assert (info.width, info.height) == (128, 96)

    back, audio = read_video(path)
    assert back.shape == (50, 96, 128, 3)
    err = np.abs(back.astype(np.int16) - np.stack(frames).astype(np.int16)).mean()
    assert err < 3.0, err

    assert abs(len(audio) / SR - 2.0) < 0.1
    n = SR  # compare one second, searching the AAC priming offset either way
    best = max(
        max(np.corrcoef(audio[lag:lag + n], sine[:n])[0, 1] for lag in range(0, 2049, 1)),
        max(np.corrcoef(audio[:n], sine[lag:lag + n])[0, 1] for lag in range(0, 2049, 1)),
    )
    assert best > 0.98, best
    assert _mid_rms(audio) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_written_audio_is_not_delayed(tmp_path):
    # A noise burst at 0.5 s locates the audio exactly (a sine cannot): the encoder's priming
    # samples must be trimmed on reading, so lip sync is not shifted.
    x = np.zeros(2 * SR, np.float32)
    x[8000:8400] = 0.5 * np.random.default_rng(0).normal(size=400)
    path = tmp_path / "burst.mp4"
    write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 50, audio=x)
    y = read_audio(path)
    lag = int(np.argmax(np.correlate(y, x[7000:9400], "valid"))) - 7000
    assert abs(lag) <= 32, lag


def test_write_odd_size_is_cropped_to_even(tmp_path):
    yy, xx = np.mgrid[0:77, 0:101]
    frame = np.repeat((60 + xx + yy).astype(np.uint8)[..., None], 3, -1)
    frame[-1, :] = frame[:, -1] = (255, 0, 0)  # the odd last row and column: red, to be cropped
    path = tmp_path / "odd.mp4"
    assert write_video(path, [frame] * 3) == 3
    info = probe_video(path)
    assert (info.width, info.height) == (100, 76)
    back, audio = read_video(path)
    assert audio is None
    assert back.shape == (3, 76, 100, 3)
    # cropped, not scaled: the kept pixels match the top-left ones and no red is left
    assert np.abs(back[0].astype(int) - frame[:76, :100]).mean() < 3
    assert (back[..., 0].astype(int) - back[..., 1]).max() < 20


def _frames_then_raise(exc, n=5):
    for k in range(n):
        yield np.full((32, 48, 3), 10 * k, np.uint8)
    raise exc


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_write_interrupted_leaves_nothing(tmp_path, exc):
    path = tmp_path / "out.mp4"
    with pytest.raises(type(exc)):
        write_video(path, _frames_then_raise(exc))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_write_interrupted_keeps_existing_output(tmp_path, exc):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(type(exc)):
        write_video(path, _frames_then_raise(exc))
    assert path.read_bytes() == b"previous result"
    assert list(tmp_path.iterdir()) == [path]


def test_write_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(TalkingFaceError):
        write_video(path, [])
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "out.mp4"
        write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 2)
    finally:
        os.umask(old)
    mode = path.stat().st_mode & 0o777
    assert mode != 0o600
    assert mode == 0o644


def test_write_replaces_existing_output(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 4)
    assert len(list(iter_video(path))) == 4
    assert list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------------------------
# check_writable


def test_check_writable_ok(tmp_path):
    assert check_writable(tmp_path / "out.mp4") == tmp_path / "out.mp4"


def test_check_writable_missing_folder(tmp_path):
    with pytest.raises(TalkingFaceError, match="does not exist"):
        check_writable(tmp_path / "nope" / "out.mp4")


def test_check_writable_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TalkingFaceError):
        check_writable(tmp_path / "file" / "out.mp4")


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_check_writable_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(TalkingFaceError, match="not writable"):
            check_writable(ro / "out.mp4")
    finally:
        ro.chmod(0o700)


def test_check_writable_same_as_input(tmp_path, monkeypatch):
    inp = tmp_path / "in.mp4"
    inp.write_bytes(b"x")
    with pytest.raises(TalkingFaceError, match="same as an input"):
        check_writable(inp, inputs=[tmp_path / "other.wav", inp])
    monkeypatch.chdir(tmp_path)  # another spelling of the same file
    with pytest.raises(TalkingFaceError, match="same as an input"):
        check_writable("./in.mp4", inputs=[inp])


def test_check_writable_output_is_directory(tmp_path):
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(TalkingFaceError, match="directory"):
        check_writable(tmp_path / "d.mp4")


def test_write_video_into_missing_folder(tmp_path):
    with pytest.raises(TalkingFaceError):
        write_video(tmp_path / "nope" / "out.mp4", [np.zeros((16, 16, 3), np.uint8)])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# read_audio: formats


def _make_audio(kind, tmp_path, tone):
    """Write a 440 Hz tone (amplitude 0.5) in one format; return (path, duration_s)."""
    dur = 1.5
    if kind == "wav8k":
        path = tmp_path / "a.wav"
        sf.write(path, tone(8000, dur), 8000, subtype="PCM_16")
    elif kind == "wav48k_stereo":
        path = tmp_path / "a.wav"
        x = tone(48000, dur)
        sf.write(path, np.stack([x, x], 1), 48000, subtype="PCM_16")
    elif kind == "flac":
        path = tmp_path / "a.flac"
        sf.write(path, tone(22050, dur), 22050, format="FLAC")
    elif kind == "mp3":
        path = tmp_path / "a.mp3"
        _encode_audio(path, "mp3", "libmp3lame", 44100, tone(44100, dur))
    elif kind == "m4a":
        path = tmp_path / "a.m4a"
        _encode_audio(path, "ipod", "aac", 44100, tone(44100, dur))
    elif kind == "ogg_opus":
        path = tmp_path / "a.opus.ogg"
        _encode_audio(path, "ogg", "libopus", 48000, tone(48000, dur))
    elif kind == "ogg_vorbis":
        path = tmp_path / "a.ogg"
        try:
            av.codec.Codec("libvorbis", "w")
            _encode_audio(path, "ogg", "libvorbis", 44100, tone(44100, dur))
        except Exception:  # FFmpeg's native Vorbis encoder is flagged experimental
            try:
                _encode_audio(path, "ogg", "vorbis", 44100, tone(44100, dur), options={"strict": "experimental"})
            except av.FFmpegError as e:
                pytest.skip(f"no usable Vorbis encoder (libvorbis missing, native vorbis: {e})")
    elif kind == "mp4_video_track":
        path = tmp_path / "v.mp4"
        write_video(path, [np.zeros((32, 32, 3), np.uint8)] * int(dur * 25), audio=tone(SR, dur))
    else:
        raise AssertionError(kind)
    return path, dur


@pytest.mark.parametrize("kind", ["wav8k", "wav48k_stereo", "flac", "mp3", "m4a", "ogg_opus",
                                  "ogg_vorbis", "mp4_video_track"])
def test_read_audio_formats(tmp_path, tone, kind):
    path, dur = _make_audio(kind, tmp_path, tone)
    y = read_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) / SR - dur) <= 0.05, len(y) / SR
    assert abs(_peak_hz(y) - 440.0) < 3.0
    assert _mid_rms(y) == pytest.approx(0.5 / np.sqrt(2), rel=0.08)
    assert np.abs(y).max() <= 1.0


def test_read_audio_other_rate(tmp_path, tone):
    path = tmp_path / "a.wav"
    sf.write(path, tone(44100, 1.0, freq=1000), 44100)
    y = read_audio(path, 22050)
    assert abs(len(y) - 22050) <= 0.05 * 22050
    assert abs(_peak_hz(y, 22050) - 1000) < 3.0


def test_stereo_downmix_is_channel_average(tmp_path, tone):
    x = tone(48000, 1.0, amp=0.9)
    cases = {"same": (x, x, 0.9), "left_only": (x, 0 * x, 0.45), "opposite": (x, -x, 0.0)}
    for name, (left, right, amp) in cases.items():
        path = tmp_path / f"{name}.wav"
        sf.write(path, np.stack([left, right], 1), 48000, subtype="FLOAT")
        y = read_audio(path)
        assert _mid_rms(y) == pytest.approx(amp / np.sqrt(2), abs=0.01), name
        assert np.abs(y).max() < 0.95, name  # identical channels are not boosted into clipping


# ----------------------------------------------------------------------------------------------
# Bad input


READERS = {
    "read_audio": read_audio,
    "iter_video": lambda p: list(iter_video(p)),
    "read_video": read_video,
    "probe_video": probe_video,
    "read_image": read_image,
}


def _bad_input(kind, tmp_path):
    if kind == "missing":
        return tmp_path / "missing.mp4"
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(20000))
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["missing", "empty", "random", "directory"])
def test_bad_input_is_one_line_error(tmp_path, reader, kind):
    path = _bad_input(kind, tmp_path)
    with pytest.raises(TalkingFaceError) as e:
        READERS[reader](path)
    _assert_one_line_naming(e, path)


@pytest.mark.parametrize("reader", ["read_audio", "iter_video", "read_video"])
def test_truncated_grid_clip_is_an_error(tmp_path, reader):
    # The GRID mp4 keeps its index (moov) after the media data: 30 % of it cannot be opened.
    data = GRID_CLIP.read_bytes()
    path = tmp_path / "trunc.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(TalkingFaceError) as e:
        READERS[reader](path)
    _assert_one_line_naming(e, path)


def test_truncated_faststart_clip_decodes_a_prefix_with_warning(tmp_path, caplog):
    # With the index first (faststart), a truncated file still opens: what was decoded is kept.
    remux = tmp_path / "faststart.mp4"
    with av.open(str(GRID_CLIP)) as src, av.open(str(remux), "w", format="mp4",
                                                 options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for pkt in src.demux():
            if pkt.dts is None:
                continue
            pkt.stream = streams[pkt.stream.index]
            dst.mux(pkt)
    data = remux.read_bytes()
    assert data[28:32] == b"moov" or b"moov" in data[:64]
    path = tmp_path / "trunc.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with caplog.at_level(logging.WARNING, logger="talkingface.media"):
        frames, audio = read_video(path)
    assert 0 < len(frames) < 75
    assert 0 < len(audio) < 3 * SR - SR // 2
    assert any("stopped early" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 3)
    with pytest.raises(TalkingFaceError, match="no audio track") as e:
        read_audio(path)
    _assert_one_line_naming(e, path)
    frames, audio = read_video(path)
    assert len(frames) == 3 and audio is None


def test_audio_only_file_has_no_video(tmp_path, tone):
    path = tmp_path / "a.wav"
    sf.write(path, tone(SR, 0.5), SR)
    for reader in ("iter_video", "read_video", "probe_video"):
        with pytest.raises(TalkingFaceError, match="no video track") as e:
            READERS[reader](path)
        _assert_one_line_naming(e, path)


# ----------------------------------------------------------------------------------------------
# read_image


QUADRANTS = [(220, 30, 30), (30, 200, 40), (20, 40, 210), (240, 240, 240)]


def _quadrant_image(w=64, h=48):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = QUADRANTS[0]
    arr[: h // 2, w // 2:] = QUADRANTS[1]
    arr[h // 2:, : w // 2] = QUADRANTS[2]
    arr[h // 2:, w // 2:] = QUADRANTS[3]
    return arr


def _quadrant_centres(arr):
    h, w = arr.shape[:2]
    return [arr[h // 4, w // 4], arr[h // 4, 3 * w // 4], arr[3 * h // 4, w // 4], arr[3 * h // 4, 3 * w // 4]]


@pytest.mark.parametrize("suffix,tol", [(".png", 0), (".bmp", 0), (".jpg", 12), (".webp", 12), (".gif", 0)])
def test_read_image_formats(tmp_path, suffix, tol):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_quadrant_image()).save(path)
    out = read_image(path)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    for got, want in zip(_quadrant_centres(out), QUADRANTS):
        assert np.abs(got.astype(int) - want).max() <= tol, (got, want)


def test_read_image_grayscale_to_three_channels(tmp_path):
    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1))
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path)
    out = read_image(path)
    assert out.shape == (20, 50, 3)
    assert np.array_equal(out[..., 0], gray)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_read_image_rgba_transparent_is_white(tmp_path):
    arr = np.zeros((20, 40, 4), np.uint8)
    arr[:, :20] = (200, 10, 10, 255)  # opaque red left half
    arr[:, 20:] = (0, 0, 0, 0)  # fully transparent (black) right half
    path = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = read_image(path)
    assert out.shape == (20, 40, 3)
    assert (out[:, :20] == (200, 10, 10)).all()
    assert (out[:, 20:] == 255).all()


def test_read_image_la_half_transparent(tmp_path):
    arr = np.zeros((10, 10, 2), np.uint8)
    arr[..., 1] = 128  # black at half opacity over white -> mid grey
    path = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(path)
    out = read_image(path)
    assert np.abs(out.astype(int) - 127).max() <= 2


def test_read_image_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    im = Image.fromarray(_quadrant_image()).convert("CMYK")
    assert im.mode == "CMYK"
    im.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = read_image(path)
    assert out.shape == (48, 64, 3)
    for got, want in zip(_quadrant_centres(out), QUADRANTS):
        assert np.abs(got.astype(int) - want).max() <= 20, (got, want)


def test_read_image_16bit_grayscale_keeps_brightness(tmp_path):
    arr = np.full((20, 30), 30000, np.uint16)  # ~46 % grey, not the image's own maximum
    arr[:, :10] = 1000
    arr[:5, 25:] = 40000
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = read_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert abs(int(out[10, 15, 0]) - round(30000 / 257)) <= 1
    assert abs(int(out[10, 5, 0]) - round(1000 / 257)) <= 1
    assert abs(int(out[0, 29, 0]) - round(40000 / 257)) <= 1
    assert (out[..., 0] == out[..., 2]).all()


def test_read_image_palette(tmp_path):
    src = Image.fromarray(_quadrant_image())
    pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    path = tmp_path / "p.png"
    pal.save(path)
    out = read_image(path)
    for got, want in zip(_quadrant_centres(out), QUADRANTS):
        assert np.abs(got.astype(int) - want).max() <= 4


def test_read_image_palette_with_transparency(tmp_path):
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    im.paste(1, (0, 0, 10, 10))  # left half: index 1 (red); right half: index 0, transparent
    path = tmp_path / "pt.png"
    im.save(path, transparency=0)
    out = read_image(path)
    assert (out[:, :10] == (200, 10, 10)).all()
    assert (out[:, 10:] == 255).all()


def test_read_image_exif_orientation(tmp_path):
    # Stored 60 wide x 40 high, red marker top-left; orientation 6 = "rotate 90 deg clockwise".
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:] = (20, 40, 200)
    arr[:12, :12] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (60, 40, 3)  # width and height swapped
    red, blue = np.array((230, 20, 20)), np.array((20, 40, 200))
    assert np.abs(out[3, -4].astype(int) - red).max() < 30  # the marker is now top-right
    for corner in (out[3, 3], out[-4, 3], out[-4, -4]):
        assert np.abs(corner.astype(int) - blue).max() < 30


def test_read_image_huge(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (90, 140, 200)).save(path, quality=90)
    out = read_image(path)
    assert out.shape == (4000, 6000, 3)
    assert np.abs(out[2000, 3000].astype(int) - (90, 140, 200)).max() <= 3


@pytest.mark.parametrize("kind", ["empty", "random", "truncated"])
def test_read_image_corrupt(tmp_path, kind):
    path = tmp_path / "bad.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    else:
        good = tmp_path / "good.png"
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(good)
        path.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(TalkingFaceError) as e:
        read_image(path)
    _assert_one_line_naming(e, path)


def test_patched_frames_encode_like_plain_frames(tmp_path):
    """The encoder's shortcut for frames that differ from a shared base only inside a box gives
    the same video as converting every frame whole."""
    from talkingface.media import PatchedFrame

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (66, 90, 3), dtype=np.uint8)  # even size after the 1-px crop rule
    frames = []
    for k in range(6):
        f = base.copy()
        f[21:40, 33:61] = rng.integers(0, 255, (19, 28, 3), dtype=np.uint8)  # odd box edges
        frames.append(f)
    plain = [np.array(f) for f in frames]
    patched = [PatchedFrame.of(f, base, (33, 21, 61, 40)) for f in frames]
    assert isinstance(patched[0][1:], np.ndarray) and patched[0][1:].box is None  # slices are plain
    a, b = tmp_path / "plain.mp4", tmp_path / "patched.mp4"
    media.write_video(a, plain, crf=0, preset="ultrafast")
    media.write_video(b, patched, crf=0, preset="ultrafast")
    fa, fb = media.read_video(a)[0], media.read_video(b)[0]
    assert len(fa) == len(fb) == 6
    assert np.array_equal(fa, fb)


def test_patched_frames_with_moving_boxes_and_new_bases(tmp_path):
    """The reused encoder frame never leaks an older frame: boxes that move (the last box is restored
    to the base), a plain frame in between, and a new base all decode like plain frames."""
    from talkingface.media import PatchedFrame

    rng = np.random.default_rng(1)
    bases = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    boxes = [(10, 8, 40, 30), (10, 8, 40, 30), (50, 30, 91, 61), (3, 3, 20, 17), (3, 3, 20, 17)]
    seq = []
    for k in range(14):
        base = bases[0] if k < 9 else bases[1]
        if k == 6:
            seq.append((rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), None, None))  # a plain frame
            continue
        x0, y0, x1, y1 = boxes[k % len(boxes)]
        f = base.copy()
        f[y0:y1, x0:x1] = rng.integers(0, 255, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
        seq.append((f, base, (x0, y0, x1, y1)))
    plain = [np.array(f) for f, _, _ in seq]
    patched = [f if b is None else PatchedFrame.of(f, b, box) for f, b, box in seq]
    a, b = tmp_path / "plain.mp4", tmp_path / "patched.mp4"
    media.write_video(a, plain, crf=0, preset="ultrafast")
    media.write_video(b, patched, crf=0, preset="ultrafast")
    fa, fb = media.read_video(a)[0], media.read_video(b)[0]
    assert len(fa) == len(fb) == 14
    for k in range(14):
        assert np.array_equal(fa[k], fb[k]), k
        err = [np.abs(fa[k].astype(int) - plain[j]).mean() for j in range(14)]
        assert int(np.argmin(err)) == k  # and each is its own frame, not a neighbour (4:2:0 blurs random colours)


# ----------------------------------------------------------------------------------------------
# Bounded reading: refused from the header, decoding that stops where it is no longer needed


def test_read_audio_refuses_two_hours_from_the_header(long_opus, counted):
    path = long_opus(7200)
    with pytest.raises(TalkingFaceError, match=r"^.*noise-7200s\.ogg: the audio is 7200\.0 s long; "
                                               r"at most 120 s is accepted$"):
        read_audio(path, SR, max_seconds=120)
    assert counted[0].decoded == 0


def test_read_audio_stops_decoding_at_the_limit_when_the_header_says_nothing(long_opus, counted, monkeypatch):
    monkeypatch.setattr(media, "stated_seconds", lambda container, stream: None)  # a header that tells nothing
    with pytest.raises(TalkingFaceError, match=r"noise-7200s\.ogg: the audio is longer than the 5 s accepted$"):
        read_audio(long_opus(7200), SR, max_seconds=5)
    assert counted[0].decoded <= 5 * 1000 // 60 + 2  # 60 ms Opus frames: 5 s and a little, not 2 hours


def test_read_audio_within_the_limit_and_without_one(tmp_path, tone):
    path = tmp_path / "a.wav"
    sf.write(path, tone(SR, 3.0), SR)
    assert len(read_audio(path, SR, max_seconds=3.0)) == 3 * SR  # exactly at the limit: taken
    assert len(read_audio(path, SR, max_seconds=4.0)) == 3 * SR
    with pytest.raises(TalkingFaceError, match=r"a\.wav: the audio is longer than the 2\.5 s accepted$"):
        read_audio(path, SR, max_seconds=2.5)  # stated 3 s: under twice the limit, so decoding decides
    with pytest.raises(TalkingFaceError, match=r"a\.wav: the audio is 3\.0 s long; at most 1 s is accepted$"):
        read_audio(path, SR, max_seconds=1)


def test_read_audio_stated_length_wrong_either_way(tmp_path, tone, monkeypatch):
    path = tmp_path / "a.wav"
    sf.write(path, tone(SR, 2.0), SR)
    for stated in (0.1, 30.0):  # the buffer grows, or gives back what it did not need
        monkeypatch.setattr(media, "stated_seconds", lambda container, stream: stated)
        y = read_audio(path, SR)
        assert len(y) == 2 * SR and (y.base is None or len(y.base) == len(y)), stated
        assert _mid_rms(y) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, from its header check
def test_read_image_too_large_is_refused_from_the_header(huge_png, monkeypatch):
    from PIL import ImageFile

    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or None)
    with pytest.raises(TalkingFaceError, match=r"^.*huge\.png: too large: 13000 x 13000 \(at most 40 megapixels\)$"):
        read_image(huge_png)
    assert loads == []  # no pixel was decoded


def test_read_image_over_pillows_own_limit_says_too_large(tmp_path):
    from conftest import uniform_png

    path = uniform_png(tmp_path / "vast.png", 20000, 20000)  # 400 Mpx: Pillow refuses to open it at all
    with pytest.raises(TalkingFaceError, match=r"vast\.png: too large: over \d+ megapixels \(at most 40 megapixels\)$"):
        read_image(path)


def test_read_image_large_jpeg_decodes_at_a_smaller_scale(tmp_path):
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (2000, 1000), (200, 60, 40)).save(path, quality=90)
    out = read_image(path, max_pixels=600_000)  # 2 Mpx over a 0.6 Mpx limit: half scale fits
    assert out.shape == (500, 1000, 3)
    assert np.abs(out[250, 500].astype(int) - (200, 60, 40)).max() <= 4
    with pytest.raises(TalkingFaceError, match=r"too large: 2000 x 1000 \(at most 0\.01 megapixels\)$"):
        read_image(path, max_pixels=10_000)  # even 1/8 (250 x 125) is over
    png = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000)).save(png)
    with pytest.raises(TalkingFaceError, match=r"wide\.png: too large: 2000 x 1000 \(at most 0\.6 megapixels\)$"):
        read_image(png, max_pixels=600_000)  # only JPEG scales while decoding


def test_iter_video_decodes_only_the_frames_asked_for(tmp_path, counted):
    path = tmp_path / "long.mp4"
    write_video(path, [np.full((32, 32, 3), k % 250, np.uint8) for k in range(500)])  # 20 s
    frames = list(iter_video(path, max_frames=30))
    assert len(frames) == 30
    assert counted[-1].decoded == 31  # the frames shown, and the one that ends the last of them
    assert len(list(iter_video(path, max_frames=1000))) == 500  # a video shorter than asked: all of it


def test_iter_video_refuses_huge_frames_from_the_header(tmp_path, counted):
    path = tmp_path / "wide.mp4"
    write_video(path, [np.zeros((64, 320, 3), np.uint8)] * 2)
    with pytest.raises(TalkingFaceError, match=r"wide\.mp4: too large: 320 x 64 video frames \(at most 0\.01 megapixels\)$"):
        list(iter_video(path, max_pixels=10_000))
    assert counted[-1].decoded == 0
