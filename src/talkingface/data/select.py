"""Phoneme-distribution-based sample selection (paper idea 3).

The paper gives no algorithm, so this is ours: each clip is a histogram of its
per-frame phoneme labels (talkingface.phonemes); pick clips greedily so the
pooled histogram of the chosen set is as close as possible (KL divergence) to a
target distribution that is flatter than the corpus one. Frequent phonemes
(and so mouth shapes) then stop dominating training.

Silence (id 0) is ignored everywhere here: how much silence a clip has says
nothing about phoneme balance. All divergences and entropies are in bits.
"""
import logging

import numpy as np

from talkingface.phonemes import PHONEMES

log = logging.getLogger(__name__)

EPS = 1e-6  # probability floor inside the log: a target phoneme the set lacks costs t*log2(t/EPS)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    s = x.sum(axis=-1, keepdims=True)
    return x / np.where(s > 0, s, 1.0)


def target_distribution(corpus_hist: np.ndarray, floor: float = 1.0, kind: str = "uniform") -> np.ndarray:
    """Target phoneme distribution (length P, sums to 1, target[0] = 0).

    Only phonemes with at least `floor` frames in the corpus get mass: a
    phoneme the corpus hardly has cannot be balanced towards.
    kind="uniform": equal mass on each of them (maximally balanced).
    kind="sqrt":    mass proportional to sqrt(corpus count), i.e. the corpus
                    distribution flattened but still shaped by it (gentler).
    """
    h = np.asarray(corpus_hist, dtype=np.float64).copy()
    h[0] = 0.0
    present = h >= max(floor, np.finfo(float).tiny)
    if not present.any():
        raise ValueError("corpus histogram has no non-silence phoneme above the floor")
    if kind == "uniform":
        t = present.astype(np.float64)
    elif kind == "sqrt":
        t = np.where(present, np.sqrt(h), 0.0)
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return t / t.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> float:
    """KL(p || q) in bits; both are normalised first, q floored at eps."""
    p, q = _normalise(p), _normalise(q)
    m = p > 0
    return float(np.sum(p[m] * np.log2(p[m] / np.maximum(q[m], eps))))


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in bits of a (not necessarily normalised) distribution."""
    p = _normalise(p)
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def select_balanced(hists: np.ndarray, size: int, target: np.ndarray, seed: int = 0) -> list[int]:
    """Greedily pick `size` clips whose pooled histogram is closest to `target`.

    hists: (N, P) per-clip phoneme counts. Each step adds the not-yet-chosen
    clip minimising KL(target || normalised(chosen_counts + hist_i)) over the
    non-silence phonemes. Returns indices in the order picked, so any prefix
    is itself a greedy selection. Ties (e.g. identical clips) are broken by a
    permutation drawn from `seed`, so the result is deterministic per seed.
    size >= N returns every index (in index order). Cost: O(size * N * P).
    """
    hists = np.asarray(hists, dtype=np.float64)
    n = len(hists)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size >= n:
        return list(range(n))
    t = np.asarray(target, dtype=np.float64)[1:]
    t = t / t.sum()
    cols = np.nonzero(t > 0)[0]
    t_cols = t[cols]
    # KL(t||q) = sum t log t - sum t log q; the first term is the same for every candidate
    t_logt = float(np.sum(t_cols * np.log2(t_cols)))

    order = np.random.default_rng(seed).permutation(n)
    h = hists[order, 1:]  # argmin returns the first minimum: candidate order is the tie-break
    h_total, h_cols = h.sum(axis=1), h[:, cols]
    cur_total, cur_cols = 0.0, np.zeros(len(cols))
    taken = np.zeros(n, dtype=bool)
    picked = []
    for _ in range(size):
        total = np.maximum(cur_total + h_total, EPS)
        q = np.maximum((cur_cols + h_cols) / total[:, None], EPS)
        kl = t_logt - np.log2(q) @ t_cols
        kl[taken] = np.inf
        j = int(np.argmin(kl))
        taken[j] = True
        cur_total += h_total[j]
        cur_cols += h_cols[j]
        picked.append(int(order[j]))
    log.debug("select_balanced: %d of %d clips, final KL %.4f bits", size, n, kl[j])
    return picked


def select_random(n: int, size: int, seed: int = 0) -> list[int]:
    """`size` distinct clip indices drawn uniformly (the ablation baseline)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(n)[:size]]


def distribution_stats(counts: np.ndarray, target: np.ndarray, n_rarest: int = 5) -> dict:
    """Summary of a pooled phoneme histogram (silence excluded).

    rarest / min_count are over the phonemes the target wants (target > 0),
    so phonemes the corpus never has do not swamp them.
    """
    c = np.asarray(counts, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    ids = [i for i in range(1, len(c)) if t[i] > 0]
    rarest = sorted(ids, key=lambda i: (c[i], i))[:n_rarest]
    return {
        "entropy": entropy(c[1:]),
        "kl_to_target": kl_divergence(t[1:], c[1:]),
        "n_phonemes_present": int(np.count_nonzero(c[1:])),
        "rarest": [(PHONEMES[i], int(c[i])) for i in rarest],
        "min_count": int(c[ids].min()) if ids else 0,
    }
