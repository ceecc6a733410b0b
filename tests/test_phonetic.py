"""The phonetic front end (pocketsphinx): alignment against GRID's own word timings, recognition,
the fallbacks, and the one-hot rows the generator hears."""

import logging

import numpy as np
import pytest

from conftest import GRID_ALIGN
from talkingface import phonemes, phonetic

pytest.importorskip("pocketsphinx")

GRID_TEXT = "bin blue at f two now"


def _prons(word: str) -> list[list[str]]:
    return [[p.rstrip("012") for p in pron] for pron in phonemes._cmudict().get(word, [])]


def test_alignment_matches_the_grid_word_boundaries_and_phone_order(grid_audio):
    words = phonetic.align_words(grid_audio, GRID_TEXT)
    spoken = [w for w in words if w[0] != "<sil>"]
    assert [w[0] for w in spoken] == GRID_TEXT.split()
    ref = [(a, b, w) for a, b, w in phonemes.read_align(GRID_ALIGN) if w not in ("sil", "sp")]
    for (word, start, end, phones), (rs, re_, rw) in zip(spoken, ref):
        assert word == rw
        # within 2 video frames (80 ms) of the official alignment, at both ends of every word
        assert abs(start - rs) <= 0.08 and abs(end - re_) <= 0.08, (word, start, end, rs, re_)
        names = [p for p, _, _ in phones]
        # the phones of each word, in order: one of its dictionary pronunciations
        assert names in _prons(word), (word, names)
        assert all(a < b for _, a, b in phones) and all(b0 <= a1 + 1e-9 for (_, _, b0), (_, a1, _) in zip(phones, phones[1:]))


def test_aligned_track_is_silence_outside_the_speech_and_ids_inside(grid_audio):
    track = phonetic.align(grid_audio, GRID_TEXT)
    assert track.shape == (phonetic.n_steps(len(grid_audio)),)
    ref = phonemes.read_align(GRID_ALIGN)
    first = next(a for a, _, w in ref if w != "sil")
    assert (track[: int(first * 100) - 8] == phonemes.SIL).all()  # leading silence, 80 ms of slack
    frames = phonetic.frame_phones(track, 75)
    want = phonemes.words_to_frame_phonemes(ref, 75)
    speech = want != phonemes.SIL
    # the same phone as the GRID timings (spread evenly over each word) on most speech frames
    assert (frames[speech] == want[speech]).mean() > 0.6


def test_recognition_without_a_transcript_gives_speech_phones(grid_audio):
    track = phonetic.recognise(grid_audio)
    assert track.shape == (phonetic.n_steps(len(grid_audio)),)
    assert track.min() >= 0 and track.max() < phonetic.N_PHONES
    speech = np.unique(track[track != phonemes.SIL])
    assert len(speech) >= 6  # six words: many different phones, not one label
    ref = phonemes.read_align(GRID_ALIGN)
    end = max(b for a, b, w in ref if w != "sil")
    assert (track[int(end * 100) + 10:] == phonemes.SIL).mean() > 0.8  # trailing silence recognised as such


def test_phone_track_falls_back_with_one_log_line(grid_audio, caplog):
    with caplog.at_level(logging.INFO, logger="talkingface.phonetic"):
        track, how = phonetic.phone_track(grid_audio, language="fr")
    assert how == "none" and (track == -1).all()
    assert sum("language" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="talkingface.phonetic"):
        track, how = phonetic.phone_track(grid_audio, "the quick brown fox jumps over the lazy dog " * 3)
    assert how == "recognised" and (track >= 0).all()
    assert any("transcript" in r.getMessage() for r in caplog.records)
    track, how = phonetic.phone_track(grid_audio, GRID_TEXT, "en-US")
    assert how == "aligned"


def test_long_speech_is_decoded_in_pieces_cut_at_pauses(grid_audio):
    x = np.concatenate([grid_audio] * 10)  # 30 s
    spans = phonetic.pieces(x, max_s=8.0)
    assert spans[0][0] == 0 and spans[-1][1] == len(x)
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert all(e - s <= 8.0 * phonetic.SAMPLE_RATE for s, e in spans)
    # each cut lies in a pause: quieter than the clip's speech on average
    rms = np.sqrt(np.mean(grid_audio ** 2))
    for _, cut in spans[:-1]:
        assert np.sqrt(np.mean(x[cut - 400: cut + 400] ** 2)) < 0.5 * rms


def test_words_outside_the_dictionary_are_aligned_with_the_projects_pronunciation(grid_audio):
    # "blooh" is in neither dictionary: espeak-ng spells it, and the alignment still holds.
    words = phonetic.align_words(grid_audio, "bin blooh at f two now")
    assert words is not None and "blooh" in [w[0] for w in words]


def test_one_hot_rows_and_frame_phones():
    track = np.array([0, 3, 3, -1, 5])
    oh = phonetic.one_hot(track)
    assert oh.shape == (phonetic.N_PHONES, 5) and oh.dtype == np.float32
    assert oh[:, 3].sum() == 0 and oh[3, 1] == 1 and oh.sum() == 4
    fp = phonetic.frame_phones(np.arange(10), 3)  # frame i's centre: step floor((i + 0.5) * 4)
    assert fp.tolist() == [2, 6, -1]


def test_recognition_does_not_depend_on_what_was_decoded_before(grid_audio):
    from conftest import CREMA_CLIP
    from talkingface.media import read_audio

    first = phonetic.recognise(grid_audio)
    phonetic.recognise(read_audio(CREMA_CLIP, 16000))  # another speaker, another level
    assert np.array_equal(phonetic.recognise(grid_audio), first)
