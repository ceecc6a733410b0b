"""Where a clip's words come from: a GRID ``.align`` file (word timings), a ``.txt`` beside the
clip, or the sentence code of corpora whose file names encode the sentence (GRID, CREMA-D)."""

from __future__ import annotations

import re
from pathlib import Path

# GRID file names encode the sentence: command colour preposition letter digit adverb, e.g.
# bbaf2n = "bin blue at f two now" (Cooke et al. 2006).
_GRID = [
    {"b": "bin", "l": "lay", "p": "place", "s": "set"},
    {"b": "blue", "g": "green", "r": "red", "w": "white"},
    {"a": "at", "b": "by", "i": "in", "w": "with"},
    None,  # letter, spoken as itself
    {"z": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
     "7": "seven", "8": "eight", "9": "nine"},
    {"a": "again", "n": "now", "p": "please", "s": "soon"},
]

# CREMA-D's 12 sentences, keyed by the code in its file names (1001_DFA_ANG_XX).
CREMA_D = {
    "IEO": "it's eleven o'clock", "TIE": "that is exactly what happened", "IOM": "i'm on my way to the meeting",
    "IWW": "i wonder what this is about", "TAI": "the airplane is almost full", "MTI": "maybe tomorrow it will be cold",
    "IWL": "i would like a new alarm clock", "ITH": "i think i have a doctor's appointment",
    "DFA": "don't forget a jacket", "ITS": "i think i've seen this before", "TSI": "the surface is slick",
    "WSI": "we'll stop in a couple of minutes",
}


def grid_sentence(stem: str) -> str | None:
    if not re.fullmatch(r"[blps][bgrw][abiw][a-z][z1-9][anps]", stem):
        return None
    words = [table[c] if table else c for table, c in zip(_GRID, stem)]
    return " ".join(words)


def crema_d_sentence(stem: str) -> str | None:
    m = re.fullmatch(r"\d{4}_([A-Z]{3})_[A-Z]{3}_[A-Z]{2}", stem)
    return CREMA_D.get(m.group(1)) if m else None


def find_transcript(video: Path) -> tuple[str, str | Path] | None:
    """('align', path) | ('text', sentence) | None for a clip."""
    align = video.with_suffix(".align")
    if align.exists():
        return "align", align
    txt = video.with_suffix(".txt")
    if txt.exists():
        return "text", txt.read_text().strip()
    text = grid_sentence(video.stem) or crema_d_sentence(video.stem)
    return ("text", text) if text else None
