from pathlib import Path

import numpy as np
import pytest

from talkingface.phonemes import (
    PHONEME_TO_ID,
    PHONEME_TO_VISEME,
    PHONEMES,
    VISEMES,
    ipa_to_arpabet,
    phoneme_histogram,
    read_align,
    transcript_to_frame_phonemes,
    viseme_ids,
    word_to_phonemes,
    words_to_frame_phonemes,
)

GRID = Path(__file__).parent / "data" / "grid" / "s1"
ALIGNS = sorted(GRID.glob("*.align"))


def raw_align(path):
    return [(int(a), int(b), w) for a, b, w in (l.split() for l in open(path) if l.strip())]


def test_inventory():
    assert len(PHONEMES) == 40 and PHONEMES[0] == "sil"
    assert len(set(PHONEMES)) == 40
    assert all(PHONEME_TO_ID[p] == i for i, p in enumerate(PHONEMES))
    assert not any(c.isdigit() for p in PHONEMES for c in p)


def test_viseme_mapping_covers_every_phoneme():
    assert set(PHONEME_TO_VISEME) == set(PHONEMES)
    assert set(PHONEME_TO_VISEME.values()) == set(VISEMES)
    v = viseme_ids(np.arange(len(PHONEMES)))
    assert v.dtype == np.int64 and v[0] == VISEMES.index("sil")
    assert all(VISEMES[v[PHONEME_TO_ID[p]]] == PHONEME_TO_VISEME[p] for p in PHONEMES)
    # lips-closed sounds share a viseme
    assert len({PHONEME_TO_VISEME[p] for p in "P B M".split()}) == 1
    assert viseme_ids(np.array([-1, 0])).tolist() == [-1, 0]  # unknown stays unknown, not the last viseme


@pytest.mark.parametrize("word,expected", [
    ("blue", ["B", "L", "UW"]),
    ("q", ["K", "Y", "UW"]),
    ("a", ["EY"]),            # the letter, not the article
    ("seven", ["S", "EH", "V", "AH", "N"]),
    ("Please.", ["P", "L", "IY", "Z"]),
])
def test_cmudict_words(word, expected):
    assert word_to_phonemes(word) == expected


def test_every_letter_is_its_name():
    for c in "abcdefghijklmnopqrstuvxyz":
        ph = word_to_phonemes(c)
        assert ph and all(p in PHONEME_TO_ID for p in ph)
        assert any(p in ("EY", "IY", "EH", "AY", "OW", "UW", "AA") for p in ph), c


@pytest.mark.parametrize("word", ["talkingface", "zyxqorp"])
def test_oov_words_use_espeak(word):
    ph = word_to_phonemes(word)
    assert len(ph) >= 5 and all(p in PHONEME_TO_ID for p in ph)
    assert ph[0] == {"talkingface": "T", "zyxqorp": "Z"}[word]


def test_ipa_mapping():
    assert ipa_to_arpabet("tʃˈɜːtʃ") == ["CH", "ER", "CH"]
    assert ipa_to_arpabet("bˈɔɪ kˈaʊ") == ["B", "OY", "K", "AW"]
    assert ipa_to_arpabet("ʔ") == []


def test_empty_word_is_an_error():
    with pytest.raises(ValueError):
        word_to_phonemes("  ")


def test_read_align():
    words = read_align(GRID / "bbas2p.align")
    assert [w for _, _, w in words] == ["sil", "bin", "blue", "at", "s", "two", "please", "sil"]
    assert words[1][:2] == pytest.approx((15250 / 25000, 21000 / 25000))
    assert words[-1][1] == pytest.approx(74500 / 25000)


@pytest.mark.parametrize("bad,lineno", [
    ("0 1000 sil\n1000 2000\n", 2),
    ("0 1000 sil\n\n1000 x2000 bin\n", 3),
    ("0 1000 sil\n2000 1000 bin\n", 2),
])
def test_read_align_malformed(tmp_path, bad, lineno):
    p = tmp_path / "bad.align"
    p.write_text(bad)
    with pytest.raises(ValueError, match=f":{lineno}:"):
        read_align(p)


@pytest.mark.parametrize("path", ALIGNS, ids=lambda p: p.stem)
def test_frame_labels_follow_align(path):
    labels = words_to_frame_phonemes(read_align(path), 75)
    assert labels.shape == (75,) and labels.dtype == np.int64
    assert labels[0] == 0 and labels[-1] == 0
    # each frame belongs to the word whose span holds its centre (units of 1/25000 s)
    for a, b, w in raw_align(path):
        frames = [i for i in range(75) if a <= i * 1000 + 500 < b]
        if w in ("sil", "sp"):
            assert all(labels[i] == 0 for i in frames)
            continue
        allowed = {PHONEME_TO_ID[p] for p in word_to_phonemes(w)}
        assert all(labels[i] in allowed for i in frames), w
        if b - a >= 2000:  # long words start and end on their own boundary frames
            assert frames[0] in (a // 1000, a // 1000 + 1) and labels[frames[0]] == PHONEME_TO_ID[word_to_phonemes(w)[0]]
            assert frames[-1] in ((b - 1) // 1000, (b - 1) // 1000 - 1)


def test_blue_in_order_and_boundaries():
    labels = words_to_frame_phonemes(read_align(GRID / "bbas2p.align"), 75)
    # blue spans 21000..25750 -> frames 21..25
    blue = [PHONEMES[i] for i in labels[21000 // 1000: 25750 // 1000 + 1]]
    assert blue[0] == "B" and blue[-1] == "UW" and "L" in blue
    order = [p for i, p in enumerate(blue) if i == 0 or p != blue[i - 1]]
    assert order == ["B", "L", "UW"]
    # bin starts at 15250 -> frame 15 (15250 // 1000); frame 14 is still silence
    assert labels[14] == 0 and PHONEMES[labels[15]] == "B"
    # please ends at 47750 -> frame 47 is its last phoneme, 48 silence
    assert PHONEMES[labels[47]] == "Z" and labels[48] == 0


def test_vowels_get_more_frames():
    # one word filling 30 frames: B(1) L(1) UW(2) -> 7.5, 7.5, 15 frames
    labels = words_to_frame_phonemes([(0.0, 1.2, "blue")], 30)
    h = phoneme_histogram(labels)
    assert h[PHONEME_TO_ID["UW"]] == 15
    assert h[PHONEME_TO_ID["B"]] + h[PHONEME_TO_ID["L"]] == 15


def test_transcript_to_frame_phonemes():
    labels = transcript_to_frame_phonemes("Bin blue at S two, please.", 75, 0.61, 1.91)
    assert labels.shape == (75,)
    assert (labels[:15] == 0).all() and (labels[48:] == 0).all() and (labels[15:48] != 0).all()
    seq = [PHONEMES[i] for i in labels[15:48]]
    assert seq[0] == "B" and seq[-1] == "Z"


def test_phoneme_histogram():
    h = phoneme_histogram(np.array([0, 0, 3, 39]))
    assert h.shape == (40,) and h.sum() == 4 and h[0] == 2 and h[39] == 1
    with pytest.raises(ValueError):
        phoneme_histogram(np.array([40]))


def test_synthetic_voices_speak_each_word_inside_its_aligned_slot():
    """scripts/synthetic_voices.py: espeak-ng speech where the .align file has words, near-silence
    where it has ``sil``, the requested length; two voice variants sound different."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts/synthetic_voices.py"
    spec = importlib.util.spec_from_file_location("synthetic_voices", path)
    sv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sv)
    words = sv.read_align(Path(__file__).parent / "data/grid/s1/bbaf2n.align")
    assert words[1] == (0.95, 1.18, "bin") and words[0][2] == "sil"
    sr = 16000
    y = sv.speak_aligned(words, "en-us", 50, 3.0, sr)
    assert y.shape == (3 * sr,) and np.isfinite(y).all()

    def rms(s, e):
        return float(np.sqrt(np.mean(y[int(s * sr): int(e * sr)] ** 2)))

    for s, e, w in words:
        if w == "sil":
            assert rms(s, e) < 0.005, (w, rms(s, e))
        else:
            assert rms(s, e) > 0.02, (w, rms(s, e))
    f = sv.speak_aligned(words, "en+f3", 80, 3.0, sr)
    assert np.abs(np.fft.rfft(f) - np.fft.rfft(y)).mean() > 0.1 * np.abs(np.fft.rfft(y)).mean()
