from pathlib import Path

import numpy as np
import pytest

from talkingface.data.select import (
    distribution_stats,
    entropy,
    kl_divergence,
    select_balanced,
    select_random,
    target_distribution,
)
from talkingface.phonemes import (
    PHONEME_TO_ID,
    PHONEMES,
    phoneme_histogram,
    read_align,
    words_to_frame_phonemes,
)

P = len(PHONEMES)
GRID = Path(__file__).parent / "data" / "grid" / "s1"

# GRID sentence grammar: command colour preposition letter digit adverb
GRAMMAR = [
    "bin lay place set".split(),
    "blue green red white".split(),
    "at by in with".split(),
    list("abcdefghijklmnopqrstuvxyz"),
    "zero one two three four five six seven eight nine".split(),
    "again now please soon".split(),
]


def grid_like_corpus(n, seed=0):
    """Clip histograms from the real GRID aligns' word timings with the six
    slot words resampled; a skewed word choice makes the corpus unbalanced."""
    rng = np.random.default_rng(seed)
    templates = [read_align(p) for p in sorted(GRID.glob("*.align"))]
    hists = []
    for _ in range(n):
        words = list(templates[rng.integers(len(templates))])
        slots = [i for i, w in enumerate(words) if w[2] not in ("sil", "sp")]
        assert len(slots) == 6
        for i, choices in zip(slots, GRAMMAR):
            p = np.full(len(choices), 1.0)
            p[0] = 5 * len(choices)  # first option dominates each slot
            word = choices[rng.choice(len(choices), p=p / p.sum())]
            words[i] = (words[i][0], words[i][1], word)
        hists.append(phoneme_histogram(words_to_frame_phonemes(words, 75)))
    return np.array(hists)


def test_entropy_and_kl():
    assert entropy(np.ones(8)) == pytest.approx(3.0)
    assert entropy(np.array([5.0, 0, 0])) == pytest.approx(0.0)
    p = np.array([1.0, 2.0, 3.0])
    assert kl_divergence(p, 10 * p) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(np.array([1.0, 1.0]), np.array([3.0, 1.0])) > 0
    # a missing phoneme is penalised, not infinite
    assert np.isfinite(kl_divergence(np.array([1.0, 1.0]), np.array([1.0, 0.0])))


def test_target_distribution():
    h = np.zeros(P)
    h[0], h[1], h[2], h[5] = 100, 9, 1, 4
    t = target_distribution(h)
    assert t[0] == 0 and t.sum() == pytest.approx(1.0)
    assert t[1] == t[2] == t[5] == pytest.approx(1 / 3) and t[3] == 0
    s = target_distribution(h, kind="sqrt")
    assert s[[1, 2, 5]] == pytest.approx(np.array([3, 1, 2]) / 6)
    assert target_distribution(h, floor=2)[2] == 0
    with pytest.raises(ValueError):
        target_distribution(h, kind="nope")


def test_balanced_picks_the_rare_clip():
    hists = np.zeros((21, P))
    hists[:20, 1:6] = 10  # common clips: phonemes 1..5
    hists[:20, 0] = 30
    hists[20, 6] = 4      # the one clip with phoneme 6
    hists += np.random.default_rng(0).integers(0, 2, hists.shape)  # break exact ties
    target = target_distribution(hists.sum(0))
    assert target[6] > 0
    picked = select_balanced(hists, 3, target)
    assert 20 in picked[:2]


def test_balanced_beats_random_on_grid():
    hists = grid_like_corpus(80)
    target = target_distribution(hists.sum(0))
    size = 12
    kl_bal = kl_divergence(target[1:], hists[select_balanced(hists, size, target)].sum(0)[1:])
    kl_rand = np.mean([kl_divergence(target[1:], hists[select_random(len(hists), size, s)].sum(0)[1:])
                       for s in range(10)])
    assert kl_bal < kl_rand
    bal = distribution_stats(hists[select_balanced(hists, size, target)].sum(0), target)
    rnd = distribution_stats(hists[select_random(len(hists), size, 0)].sum(0), target)
    assert bal["entropy"] > rnd["entropy"]
    assert bal["n_phonemes_present"] >= rnd["n_phonemes_present"]


def test_real_grid_clips():
    hists = np.array([phoneme_histogram(words_to_frame_phonemes(read_align(p), 75))
                      for p in sorted(GRID.glob("*.align"))])
    target = target_distribution(hists.sum(0))
    n = len(hists)
    assert n >= 2
    assert select_balanced(hists, 1, target)[0] in range(n)
    assert select_balanced(hists, n + 3, target) == list(range(n))  # asking for more than exist returns all


def test_deterministic_and_sizes():
    hists = grid_like_corpus(30, seed=1)
    hists = np.concatenate([hists, hists[:5]])  # exact duplicates force ties
    target = target_distribution(hists.sum(0))
    a = select_balanced(hists, 10, target, seed=3)
    assert a == select_balanced(hists, 10, target, seed=3)
    assert len(set(a)) == 10
    assert select_balanced(hists, len(hists) + 3, target) == list(range(len(hists)))
    assert select_random(35, 10, 7) == select_random(35, 10, 7)
    assert len(set(select_random(35, 10, 7))) == 10
    for bad in (0, -1):
        with pytest.raises(ValueError):
            select_balanced(hists, bad, target)
        with pytest.raises(ValueError):
            select_random(35, bad, 0)


def test_distribution_stats():
    counts = np.zeros(P)
    counts[0] = 50
    for p, c in {"AA": 10, "B": 1, "IY": 7, "S": 3, "T": 2, "UW": 5}.items():
        counts[PHONEME_TO_ID[p]] = c
    target = target_distribution(counts)
    st = distribution_stats(counts, target)
    assert st["n_phonemes_present"] == 6 and st["min_count"] == 1
    assert st["rarest"] == [("B", 1), ("T", 2), ("S", 3), ("UW", 5), ("IY", 7)]
    assert 0 < st["entropy"] < np.log2(6)
    assert st["kl_to_target"] > 0
