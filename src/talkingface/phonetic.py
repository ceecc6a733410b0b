"""The phonetic front end: speech (+ an optional transcript) -> a phone track at 100 Hz, the
log-mel's own step (10 ms), one implementation for ``prepare``, training, ``evaluate`` and
``generate``.

Why: log-mel frames carry the speaker's voice, and the shipped training data holds one voice, so an
audio -> mouth model trained on it follows unseen voices loosely. A phone recogniser trained on
many speakers maps any voice onto the same 40 symbols. CMU's pocketsphinx (``pip install
pocketsphinx``, BSD) ships such an acoustic model (US English, many speakers) with a phone language
model: it recognises phones without a transcript ("allphone" search) and force-aligns a given
transcript phone by phone. Its frames are 10 ms, the mel hop, so the track lines up with the mel
steps one for one and is windowed around each video frame by the same ``audio.frame_windows``.

Ids are ``phonemes.PHONEMES`` (0 = silence; pocketsphinx's noise phones count as silence); -1
means "no phonetic information" (a language the recogniser does not cover, or recognition that
failed): the model then hears the audio alone (it is trained with phone dropout for that).

Long speech is cut at pauses into pieces of at most ``MAX_PIECE_S`` seconds and each piece is
decoded on its own, so memory stays flat with length; a transcript is shared out over the pieces
in proportion to their speech.
"""

from __future__ import annotations

import functools
import logging
import re
import threading

import numpy as np

from . import phonemes
from .errors import TalkingFaceError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
STEP = 160  # samples per pocketsphinx frame (10 ms): audio.AudioConfig's hop
N_PHONES = len(phonemes.PHONEMES)
MAX_PIECE_S = 20.0  # pieces decoded in one call: pocketsphinx's search grows with utterance length
LANGUAGES = ("en",)  # what the bundled acoustic model covers
INSTALL = "pip install pocketsphinx==5.1.1"

_PS_TO_ID = {p: i for i, p in enumerate(phonemes.PHONEMES) if i}  # ARPAbet upper case, as pocketsphinx spells them
_LOCK = threading.Lock()  # a pocketsphinx decoder is not thread safe, and the server has threads


def n_steps(n_samples: int) -> int:
    """Phone-track length for a waveform: one per mel step (``audio.log_mel``'s M = N // hop + 1)."""
    return n_samples // STEP + 1


def language_supported(language: str) -> bool:
    return language.lower().split("-")[0].split("_")[0] in LANGUAGES


@functools.lru_cache(maxsize=1)
def _model_dir() -> str:
    try:
        import pocketsphinx
    except ImportError as e:
        raise TalkingFaceError(f"the phonetic front end needs pocketsphinx: {INSTALL}") from e
    return pocketsphinx.get_model_path()


@functools.lru_cache(maxsize=1)
def _recogniser():
    import os

    from pocketsphinx import Decoder

    # Phone recognition with the phone bigram LM. lw/pip as CMU suggests for allphone search;
    # wider beams than the defaults cost ~2x time and gave the same phones on GRID clips.
    return Decoder(allphone=os.path.join(_model_dir(), "en-us", "en-us-phone.lm.bin"), lw=2.0, pip=0.3,
                   beam=1e-20, pbeam=1e-20, cmn="batch", loglevel="FATAL")


def _aligner():
    """A fresh aligning decoder (~0.3 s to load the acoustic model): pocketsphinx 5.1.1's
    phone-level alignment fails on a decoder that has aligned once before."""
    from pocketsphinx import Decoder

    _model_dir()
    return Decoder(cmn="batch", loglevel="FATAL")


def _to_pcm(audio: np.ndarray) -> bytes:
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).astype("<i2").tobytes()


def _fill(track: np.ndarray, segments, offset: int) -> None:
    """Write (phone, first_frame, last_frame) segments into ``track`` from ``offset``."""
    for name, f0, f1 in segments:
        pid = _PS_TO_ID.get(name.upper().split("(")[0], phonemes.SIL)  # SIL, +NSN+, +SPN+ -> silence
        a, b = offset + max(0, f0), min(len(track), offset + f1 + 1)
        if b > a:
            track[a:b] = pid


def pieces(audio: np.ndarray, max_s: float = MAX_PIECE_S) -> list[tuple[int, int]]:
    """Cut a waveform into (start, end) sample ranges of at most ``max_s`` seconds, each cut at the
    quietest 100 ms in the last third of the piece (a pause, where a cut splits no phone)."""
    n, limit = len(audio), int(max_s * SAMPLE_RATE)
    if n <= limit:
        return [(0, n)]
    hop = SAMPLE_RATE // 100
    x = np.asarray(audio, dtype=np.float32)
    out, s = [], 0
    while n - s > limit:
        lo, hi = s + 2 * limit // 3, s + limit
        seg = x[lo:hi]
        k = len(seg) // hop
        energy = (seg[: k * hop].reshape(k, hop) ** 2).mean(1)
        smooth = np.convolve(energy, np.ones(10) / 10, mode="same")  # 100 ms
        cut = lo + int(np.argmin(smooth)) * hop
        out.append((s, cut))
        s = cut
    out.append((s, n))
    return out


def recognise(audio: np.ndarray) -> np.ndarray:
    """Phones of 16 kHz mono speech without a transcript: (M,) ids at 100 Hz (``n_steps``)."""
    track = np.full(n_steps(len(audio)), phonemes.SIL, np.int64)
    with _LOCK:
        dec = _recogniser()
        for s, e in pieces(audio):
            # The feature front end keeps state across utterances (noise and cepstral-mean
            # estimates): reset it, so a piece gives the same phones whatever was decoded before
            # it (prepare's workers, the server, evaluation in any order).
            dec.reinit_feat()
            dec.start_utt()
            dec.process_raw(_to_pcm(audio[s:e]), full_utt=True)
            dec.end_utt()
            _fill(track, [(seg.word, seg.start_frame, seg.end_frame) for seg in dec.seg()], s // STEP)
    return track


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower().replace("’", "'"))


def _dictionary_word(dec, word: str) -> str:
    """``word`` as the aligner knows it; words pocketsphinx's dictionary lacks are added with the
    project's own pronunciation (CMUdict, else espeak-ng: ``phonemes.word_to_phonemes``)."""
    if dec.lookup_word(word) is None:
        dec.add_word(word, " ".join(phonemes.word_to_phonemes(word)), True)
    return word


def _align_piece(dec, pcm: bytes, words: list[str]) -> list[tuple[str, int, int, list]] | None:
    """[(word, first_frame, last_frame, [(phone, first_frame, last_frame), ...]), ...] of one piece
    (10 ms frames from the piece's start), silences included as "<sil>"; None if it will not align."""
    if not words:
        return [("<sil>", 0, len(pcm) // 2 // STEP, [("SIL", 0, len(pcm) // 2 // STEP)])]
    dec.set_align_text(" ".join(_dictionary_word(dec, w) for w in words))
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    if dec.hyp() is None:
        return None
    dec.set_alignment()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    al = dec.get_alignment()
    if al is None:
        return None
    return [(w.name.split("(")[0], w.start, w.start + w.duration - 1,
             [(p.name, p.start, p.start + p.duration - 1) for p in w]) for w in al]


def align_words(audio: np.ndarray, text: str) -> list[tuple[str, float, float, list]] | None:
    """16 kHz mono speech force-aligned to its transcript: [(word, start_s, end_s, [(phone,
    start_s, end_s), ...]), ...] with silences as "<sil>", or None when the transcript cannot be
    aligned to the speech (it does not match, or is empty)."""
    words = _words(text)
    if not words:
        return None
    spans = pieces(audio)
    # Share the words out over the pieces in proportion to each piece's speech (frames above the
    # utterance's quiet floor): a cut at a pause falls between words.
    x = np.asarray(audio, dtype=np.float32)
    hop = SAMPLE_RATE // 100
    k = len(x) // hop
    energy = (x[: k * hop].reshape(k, hop) ** 2).mean(1) if k else np.zeros(1)
    voiced = energy > 0.1 * np.median(energy[energy > 0]) if (energy > 0).any() else np.zeros_like(energy, bool)
    share = np.array([voiced[s // hop: e // hop].sum() for s, e in spans], np.float64) + 1e-9
    bounds = np.round(np.cumsum(share) / share.sum() * len(words)).astype(int)
    out = []
    with _LOCK:
        w0 = 0
        for (s, e), w1 in zip(spans, bounds):
            dec = _aligner()
            try:
                segs = _align_piece(dec, _to_pcm(audio[s:e]), words[w0:w1])
            except (RuntimeError, ValueError) as err:  # pocketsphinx refuses the text, or no pronunciation
                log.debug("alignment failed: %s", err)
                segs = None
            if segs is None:
                return None
            f = s // STEP
            sec = 1.0 / 100
            out += [(w, (f + a) * sec, (f + b + 1) * sec, [(p, (f + pa) * sec, (f + pb + 1) * sec) for p, pa, pb in ph])
                    for w, a, b, ph in segs]
            w0 = w1
    return out


def align(audio: np.ndarray, text: str) -> np.ndarray | None:
    """Phones of 16 kHz mono speech force-aligned to its transcript: (M,) ids at 100 Hz, or None
    when the transcript cannot be aligned to the speech (``align_words``)."""
    words = align_words(audio, text)
    if words is None:
        return None
    track = np.full(n_steps(len(audio)), phonemes.SIL, np.int64)
    segs = [(p, int(round(a * 100)), int(round(b * 100)) - 1) for _, _, _, ph in words for p, a, b in ph]
    _fill(track, segs, 0)
    return track


def phone_track(audio: np.ndarray, text: str | None = None, language: str = "en") -> tuple[np.ndarray, str]:
    """The phone track (M,) at 100 Hz of 16 kHz mono speech and how it was made: "aligned" (to
    ``text``), "recognised" (no text, or a text that does not match the speech: a warning), or
    "none" (a language the recogniser does not cover: all -1, the model hears the audio alone)."""
    if not language_supported(language):
        log.info("no phone recogniser for language %r (covered: %s): lips follow the audio alone",
                 language, ", ".join(LANGUAGES))
        return np.full(n_steps(len(audio)), -1, np.int64), "none"
    if text is not None and text.strip():
        track = align(audio, text)
        if track is not None:
            return track, "aligned"
        log.warning("the transcript could not be aligned to the speech (does it match?): recognising phones instead")
    return recognise(audio), "recognised"


def one_hot(track: np.ndarray) -> np.ndarray:
    """(M,) phone ids -> (N_PHONES, M) float32 one-hot rows; -1 gives an all-zero column."""
    t = np.asarray(track, dtype=np.int64)
    out = np.zeros((N_PHONES, len(t)), np.float32)
    ok = t >= 0
    out[t[ok], np.nonzero(ok)[0]] = 1.0
    return out


def frame_phones(track: np.ndarray, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """The phone at each video frame's centre (i + 0.5) / fps: (n_frames,) ids (-1 past the end)."""
    idx = np.floor((np.arange(n_frames) + 0.5) / fps * 100).astype(np.int64)
    out = np.full(n_frames, -1, np.int64)
    ok = idx < len(track)
    out[ok] = np.asarray(track)[idx[ok]]
    return out
