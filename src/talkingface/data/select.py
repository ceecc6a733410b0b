"""Phoneme-distribution-based sample selection (paper idea 3).

The paper gives no algorithm, so this is ours: each clip is a histogram of its
per-frame phoneme labels (talkingface.phonemes); pick clips greedily so the
pooled histogram of the chosen set is as close as possible (KL divergence) to a
target distribution that is flatter than the corpus one. Frequent phonemes
(and so mouth shapes) then stop dominating training.

Silence (id 0) is ignored everywhere here: how much silence a clip has says
nothing about phoneme balance. All divergences and entropies are in bits.
"""
import json
import logging
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# `talkingface select`: the file-level entry point around the pure functions above.


def run_select(corpus: str | Path, size: int, strategy: str = "balanced", seed: int = 0,
               unit: str = "phoneme", target_kind: str = "uniform", name: str | None = None) -> dict:
    """Choose ``size`` training clips of a prepared corpus and save the choice and its statistics
    (JSON + PNG bar plot of the distribution before/after) under ``corpus/selections/``.

    Only train-split clips with phoneme labels are candidates, so val/test clips can never leak in.
    ``unit="viseme"`` balances mouth-shape classes instead of phonemes.
    """
    from ..errors import TalkingFaceError
    from ..phonemes import PHONEME_TO_VISEME, PHONEMES, VISEMES

    corpus = Path(corpus)
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        raise TalkingFaceError(f"{corpus}: no manifest.jsonl (run `talkingface prepare` first)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    cand = [r for r in rows if r.get("split") == "train" and r["phoneme_source"] != "none"]
    if not cand:
        raise TalkingFaceError(f"{corpus}: no train clips with phoneme labels")
    hists = np.array([r["phoneme_hist"] for r in cand], dtype=np.float64)  # (N, P)
    names = list(PHONEMES)
    if unit == "viseme":
        to_v = np.zeros((len(PHONEMES), len(VISEMES)))
        for i, p in enumerate(PHONEMES):
            to_v[i, VISEMES.index(PHONEME_TO_VISEME[p])] = 1
        hists, names = hists @ to_v, list(VISEMES)
    elif unit != "phoneme":
        raise TalkingFaceError(f"unit must be 'phoneme' or 'viseme', got {unit!r}")
    target = target_distribution(hists.sum(0), kind=target_kind)
    if strategy == "balanced":
        idx = select_balanced(hists, size, target, seed)
    elif strategy == "random":
        idx = select_random(len(cand), size, seed)
    else:
        raise TalkingFaceError(f"strategy must be 'balanced' or 'random', got {strategy!r}")

    before = distribution_stats(hists.sum(0), target)
    after = distribution_stats(hists[idx].sum(0), target)
    # What random selection of the same size gives, averaged over seeds: the bar to beat.
    rand_kl = [kl_divergence(target[1:], hists[select_random(len(cand), min(size, len(cand)), s)].sum(0)[1:])
               for s in range(20)]
    # The split rule, checked on what was chosen: no held-out speaker, no held-out sentence.
    held = [r for r in rows if r.get("split") in ("val", "test")]
    train_speakers = {r["speaker"] for r in rows if r.get("split") == "train"}
    held_out_speakers = {r["speaker"] for r in held} - train_speakers
    held_sentences = {r["sentence"] for r in held if r["speaker"] in train_speakers}
    chosen = [cand[i] for i in idx]
    leaks = [r["clip"] for r in chosen if r["speaker"] in held_out_speakers or r["sentence"] in held_sentences]
    name = name or f"{strategy}-{unit}-{size}"
    out_dir = corpus / "selections"
    out_dir.mkdir(exist_ok=True)
    result = {
        "name": name, "strategy": strategy, "unit": unit, "size": len(idx), "seed": seed, "target": target_kind,
        "candidates": len(cand), "clips": [cand[i]["clip"] for i in idx],
        "leaked_val_test_clips": leaks, "held_out_speakers": sorted(held_out_speakers),
        "before": before, "after": after, "random_kl_mean_20_seeds": float(np.mean(rand_kl)),
        "units": names,
        "counts_before": hists.sum(0).tolist(), "counts_after": hists[idx].sum(0).tolist(),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot_distribution(out_dir / f"{name}.png", names, hists.sum(0), hists[idx].sum(0), target, name)
    result["json"] = str(out_dir / f"{name}.json")
    result["png"] = str(out_dir / f"{name}.png")
    return result


def _plot_distribution(path: Path, names, before, after, target, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, a = np.asarray(before, float)[1:], np.asarray(after, float)[1:]
    x = np.arange(len(b))
    fig, ax = plt.subplots(figsize=(max(8, len(b) * 0.3), 4))
    ax.bar(x - 0.2, b / b.sum(), 0.4, label="all train clips")
    ax.bar(x + 0.2, a / max(a.sum(), 1), 0.4, label="selected")
    ax.plot(x, np.asarray(target)[1:], "k_", markersize=10, label="target")
    ax.set_xticks(x, names[1:], rotation=90, fontsize=7)
    ax.set_ylabel("share of speech frames")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
