"""Shared fixtures: the small real clips in tests/data and a pure-tone generator."""

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
GRID_CLIP = DATA / "grid" / "s1" / "bbaf2n.mp4"
GRID_ALIGN = DATA / "grid" / "s1" / "bbaf2n.align"
CREMA_CLIP = DATA / "crema-d" / "1001" / "1001_DFA_NEU_XX.mp4"


@pytest.fixture(scope="session")
def grid_audio() -> np.ndarray:
    """The GRID clip's speech, decoded once: mono float32 at 16 kHz."""
    from talkingface.media import read_audio

    return read_audio(GRID_CLIP, 16000)


@pytest.fixture
def tone():
    """tone(sample_rate, seconds, freq=440, amp=0.5) -> float32 sine."""

    def make(sample_rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
        t = np.arange(int(round(sample_rate * seconds))) / sample_rate
        return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)

    return make


def long_opus(path, seconds: int = 7200):
    """An Ogg Opus file of low noise (8 kHz mono, 6 kb/s, ~4 MB for 2 hours): 10 s encoded once,
    its packets muxed again and again (about a second for 2 hours)."""
    import av

    rate, piece = 8000, 10
    noise = (np.random.default_rng(0).standard_normal(rate * piece) * 0.01).astype(np.float32)
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate)
        stream.layout, stream.bit_rate = "mono", 6000
        stream.options = {"frame_duration": "60"}  # a third of the packets to mux of the default 20 ms
        frame = av.AudioFrame.from_ndarray(noise[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        packets = [(p.pts, p.duration, bytes(p), p.time_base) for p in [*stream.encode(frame), *stream.encode(None)]]
        for r in range(seconds // piece):
            for pts, duration, data, time_base in packets:
                p = av.Packet(data)
                p.pts = p.dts = pts + r * int(piece / time_base)
                p.duration, p.time_base, p.stream = duration, time_base, stream
                out.mux(p)
    return Path(path)


@pytest.fixture(scope="session", name="long_opus")
def long_opus_fixture(tmp_path_factory):
    """long_opus(seconds=7200) -> a path made by `long_opus`, once per length per session."""
    made = {}

    def make(seconds: int = 7200):
        if seconds not in made:
            made[seconds] = long_opus(tmp_path_factory.mktemp("long_opus") / f"noise-{seconds}s.ogg", seconds)
        return made[seconds]

    return make


def uniform_png(path, width: int, height: int, value: int = 128):
    """A uniform RGB PNG of any size, written directly in a fraction of a second (13000 x 13000:
    ~0.5 MB, 0.3 s; Pillow takes ~7 s to compress one): one deflate block of 64 rows after a full
    flush is the same bytes every time, so it is made once and repeated."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 64
    block = (b"\0" + bytes([value]) * (3 * width)) * rows  # filter byte 0 (none) + RGB, per row
    n, rest = divmod(height, rows)
    tail = block[: len(block) // rows * rest]
    z = zlib.compressobj(9)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    last = z.compress(tail) + z.flush()
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    data = first + again * (n - 1) + last[:-4] + struct.pack(">I", zlib.adler32(tail, adler))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return Path(path)


def rest_upload(url: str, *paths) -> list[dict]:
    """Uploads files to a Gradio server at ``url`` over its REST API: their FileData, for the
    ``data`` of a ``/gradio_api/call/...`` request."""
    import httpx

    files = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
    uploaded = httpx.post(f"{url}gradio_api/upload", files=files, timeout=30).json()
    return [{"path": u, "meta": {"_type": "gradio.FileData"}} for u in uploaded]


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory):
    """A uniform 13000 x 13000 RGB PNG (~0.5 MB; 0.5 GB decoded)."""
    return uniform_png(tmp_path_factory.mktemp("huge_png") / "huge.png", 13000, 13000)


class CountingContainer:
    """A PyAV container that counts the frames its ``decode`` hands out (``av`` containers take
    no new attributes, so this wraps one)."""

    def __init__(self, container, path):
        self.container, self.path, self.decoded = container, Path(path), 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.container.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.container, name)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


@pytest.fixture
def counted(monkeypatch):
    """The containers ``talkingface.media`` opens from now on (a list of ``CountingContainer``s,
    in order), each counting its decoded frames."""
    import av

    from talkingface import media

    opened = []

    def _open(path):
        opened.append(CountingContainer(av.open(str(path), metadata_errors="ignore"), path))
        return opened[-1]

    monkeypatch.setattr(media, "_open", _open)
    return opened
