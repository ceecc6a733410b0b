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
