"""Extra voices for the audio -> motion half without new recordings: espeak-ng (bundled by
espeakng_loader) speaks each GRID training clip's words, every word stretched into the slot its
.align file gives it, so the clip's real lip motion still matches the (now synthetic) speech. One
random voice variant and pitch per copy. Used by ``scripts/motion_probe.py --synthetic-voices N``.

    python scripts/synthetic_voices.py ../shared/train/grid/s1/bbaf2n.align -o /tmp/bbaf2n_en+f3.wav --voice en+f3
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
from pathlib import Path

import numpy as np

from talkingface.audio import audio_frame_features
from talkingface.phonemes import _ESPEAK_LOCK, _espeak

VOICES = ["en-us", "en", "en+f3", "en+f2", "en+m3", "en-us+f4", "en+m7", "en-us+f1", "en+klatt", "en-us+m2"]
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_chunks: list[np.ndarray] = []


def _collect(wav, n, events) -> int:
    if n > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


_callback = _SYNTH_CALLBACK(_collect)  # kept alive for as long as espeak may call it


def say(text: str, voice: str = "en-us", rate: float = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """espeak-ng speaking ``text``: (float32 waveform, sample rate)."""
    with _ESPEAK_LOCK:
        lib = _espeak()
        lib.espeak_SetSynthCallback(_callback)
        lib.espeak_SetVoiceByName(voice.encode())
        for p, v in ((_RATE, int(rate)), (_PITCH, int(pitch)), (_RANGE, 50)):
            lib.espeak_SetParameter(ctypes.c_int(p), ctypes.c_int(v), ctypes.c_int(0))
        _chunks.clear()
        b = ctypes.create_string_buffer(text.encode())
        lib.espeak_Synth(b, ctypes.c_size_t(len(b)), ctypes.c_uint(0), ctypes.c_int(_POS_CHARACTER), ctypes.c_uint(0),
                         ctypes.c_uint(_CHARS_UTF8), None, None)
        lib.espeak_Synchronize()
        x = np.concatenate(_chunks).astype(np.float32) / 32768 if _chunks else np.zeros(1, np.float32)
        return x, lib.sample_rate


def _trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    idx = np.nonzero(np.abs(x) > threshold)[0]
    return x[idx[0]: idx[-1] + 1] if len(idx) else x[:1]


def _stretch(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)


def read_align(path: str | Path) -> list[tuple[float, float, str]]:
    """GRID .align lines "start end word" in 1/25000 s -> [(start_s, end_s, word)]."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return [(int(a) / 25000, int(b) / 25000, w) for a, b, w in rows]


def speak_aligned(words: list[tuple[float, float, str]], voice: str, pitch: int, seconds: float,
                  sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A waveform of ``seconds`` with every word of ``words`` spoken inside its slot (silences:
    faint noise). Each word is synthesised at about the right speed, then stretched to fit exactly
    (a small pitch and formant change, on top of the voice variant's)."""
    out = np.random.default_rng(seed).normal(0, 1e-3, int(round(seconds * sample_rate))).astype(np.float32)
    for s, e, w in words:
        if w in ("sil", "sp") or e - s <= 0.02:
            continue
        x, sr = say(w, voice, 175, pitch)
        natural = len(_trim(x)) / sr
        x, sr = say(w, voice, float(np.clip(175 * natural / (e - s), 80, 450)), pitch)
        y = _stretch(_trim(x), int(round((e - s) * sample_rate)))
        a = int(round(s * sample_rate))
        out[a: a + len(y)] += y[: len(out) - a] * 0.5
    return out


def synthetic_copies(clips, rows, copies: int, rng: np.random.Generator, fps: float = 25.0) -> list:
    """For every GRID clip (its source has a .align beside it): ``copies`` ClipTensors with the
    same frames and landmarks and the features of a synthetic voice saying the same words."""
    out = []
    for c, r in zip(clips, rows):
        words = read_align(Path(r["source"]).with_suffix(".align"))
        t = len(c.mel)
        for k in range(copies):
            voice = VOICES[int(rng.integers(len(VOICES)))]
            y = speak_aligned(words, voice, int(rng.integers(25, 85)), t / fps, seed=int(rng.integers(1 << 30)))
            out.append(dataclasses.replace(c, mel=audio_frame_features(y, t, fps).to(c.mel.dtype), clip=f"{c.clip}#voice{k}"))
    return out


def main() -> None:
    import soundfile as sf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("align")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--voice", default="en-us", choices=VOICES)
    ap.add_argument("--pitch", type=int, default=50)
    args = ap.parse_args()
    words = read_align(args.align)
    sf.write(args.out, speak_aligned(words, args.voice, args.pitch, words[-1][1] + 0.02), 16000)


if __name__ == "__main__":
    main()
