"""Which of the paper's claims held in our ablations: reads the report folder that
`scripts/run_ablations.sh` wrote (metrics.json, stills.json) and writes claims.md beside it.

    python scripts/ablation_claims.py results/ablations

Each claim compares two rows that differ in one thing. Per-clip measures are compared clip by clip
(the same clips, faces and audio for both rows): the mean difference, a 95% bootstrap interval over
clips and how many clips improved. A claim "held" when its primary measure improved with an
interval that excludes 0, "did not hold" when it got worse the same way, else "no clear difference".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from talkingface.evaluation.evaluate import clip_values
from talkingface.evaluation.metrics import paired_gain as compare

# (claim, baseline row, row with the change, primary measure, other measures shown)
CLAIMS = [
    ("recurrence (GRU) -> smoother mouth motion", "no-gru", "full", "jitter",
     ["jitter_silent", "jitter_gap", "open_corr", "lse_d"]),
    ("recurrence in the painting peer -> smoother", "wav2lip-style", "paint", "jitter",
     ["jitter_silent", "jitter_gap", "open_corr", "lse_d"]),
    ("frame discriminator -> sharper, more realistic mouths", "gru-no-adv", "gru-frame-d", "psnr_mouth",
     ["ssim_mouth", "lmd_norm", "open_corr", "jitter_gap"]),
    ("sequence discriminator -> more realistic motion", "gru-frame-d", "gru-frame-seq-d", "jitter_gap",
     ["open_corr", "width_corr", "lmd_norm", "jitter"]),
    ("sync critic -> better lip sync", "gru-frame-seq-d", "full", "lse_d",
     ["sync_dist_at_0", "lse_c", "lse_d_lm", "sync_dist_at_0_lm", "open_corr", "viseme_acc"]),
    ("phoneme-balanced selection -> better sync (rare mouth shapes below)", "random-selection", "full", "lse_d",
     ["sync_dist_at_0", "lse_d_lm", "sync_dist_at_0_lm", "open_corr", "viseme_acc"]),
    ("warping the photo (ours) -> better on unseen faces than painting", "paint", "full", "psnr_mouth",
     ["ssim_mouth", "id_psnr", "open_corr", "lse_d"]),
    ("ours vs the Wav2Lip-style frame-wise in-painting peer", "wav2lip-style", "full", "lse_d",
     ["lse_d_lm", "psnr_mouth", "open_corr", "jitter", "id_psnr"]),
]
# The pixel sync expert (lse_d) ranks real audio first only on the training speaker; the landmark
# one (lse_d_lm, where the report has it) also on unseen speakers: sync claims are checked by both.
LANDMARK_CHECK = "lse_d_lm"
LOWER_IS_BETTER = {"jitter", "jitter_silent", "jitter_gap", "lmd_norm", "lmd_px", "lse_d", "sync_dist_at_0",
                   "lse_d_lm", "sync_dist_at_0_lm"}


def per_clip(metrics: dict, system: str, key: str, clips: list[str]) -> np.ndarray:
    """One value per clip; jitter_gap = |jitter - the real clip's jitter| (how far the motion's
    roughness is from real motion, whichever way)."""
    if key != "jitter_gap":
        return clip_values(metrics["per_clip"], system, key, clips)
    return np.asarray([abs(r[system]["jitter"] - r["real"]["jitter"]) if system in r else np.nan
                       for r in (metrics["per_clip"][c] for c in clips)], float)


def verdict(c: dict) -> str:
    if not c.get("n"):
        return "not measured"
    if c["lo"] > 0:
        return "held"
    if c["hi"] < 0:
        return "did not hold (worse)"
    return "no clear difference"


def claims_report(metrics: dict, stills: dict | None = None, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    systems = set(metrics["summary"])
    groups = {"all": metrics["clips"]}
    speakers = {c: c.split("/")[0] for c in metrics["clips"]}  # corpus clip ids are speaker/name
    for grp, g in metrics["by_group"].items():
        groups[grp] = [c for c in metrics["clips"] if speakers[c] in g["speakers"]]
    intro = ["# The paper's claims on our data", "",
             f"From `{metrics.get('corpus')}` split `{metrics.get('split')}`, {len(metrics['clips'])} clips; every row "
             "trained on the same budget (configs/ablations/base.toml). Gain = how much the second row improves on "
             "the first (sign flipped for lower-is-better measures), mean over clips with a 95% bootstrap interval; "
             "'better' = clips where it improved; real = the real clips, where the measure applies to them.", ""]
    lines: list[str] = []
    summary_rows = []
    has_lm = any(LANDMARK_CHECK in m for r in metrics["per_clip"].values() for m in r.values())
    checks = {}  # claim -> the landmark sync measure's gain and verdict, for sync claims
    for title, base, new, primary, others in CLAIMS:
        if base not in systems or new not in systems:
            lines += [f"## {title}", "", f"Not measured: rows `{base}` and `{new}` are not both in the report.", ""]
            summary_rows.append((title, base, new, primary, "not measured", ""))
            continue
        if has_lm and primary == "lse_d" and LANDMARK_CHECK in others:
            c = compare(per_clip(metrics, base, LANDMARK_CHECK, metrics["clips"]),
                        per_clip(metrics, new, LANDMARK_CHECK, metrics["clips"]), True, np.random.default_rng(seed))
            checks[title] = f"{c['gain']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] {verdict(c)}" if c.get("n") else "not measured"
        lines += [f"## {title}: `{base}` -> `{new}`", "",
                  "| measure | clips | real | " + f"{base} | {new} | gain [95% CI] | better on |", "|---|---|---|---|---|---|---|"]
        first = None
        for key in [primary] + others:
            for grp, clips in groups.items():
                c = compare(per_clip(metrics, base, key, clips), per_clip(metrics, new, key, clips),
                            key in LOWER_IS_BETTER, rng)
                if not c.get("n"):
                    continue
                if first is None and grp == "all":
                    first = c
                rv = per_clip(metrics, "real", key, clips) if key != "jitter_gap" else np.zeros(1)
                real = f"{np.nanmean(rv):.3f}" if np.isfinite(rv).any() else ""
                lines.append(f"| {'**' + key + '**' if key == primary else key} | {grp} | {real} | {c['a']:.3f} | {c['b']:.3f} | "
                             f"{c['gain']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['better']}/{c['n']} |")
        v = verdict(first or {})
        lines += ["", f"Primary measure `{primary}` over all clips: **{v}**.", ""]
        summary_rows.append((title, base, new, primary, v, f"{first['gain']:+.3f} [{first['lo']:+.3f}, {first['hi']:+.3f}]"
                             if first else ""))
        if "rare mouth shapes" in title:
            lines += rare_visemes(metrics, base, new)
        if stills and "unseen faces" in title:
            lines += stills_lines(stills, [base, new])
    head = ["## Summary", "", "| claim | rows | primary measure | gain [95% CI] | verdict |", "|---|---|---|---|---|"]
    head += [f"| {t} | {b} -> {n} | {p} | {g} | {v} |" for t, b, n, p, v, g in summary_rows]
    if has_lm:  # one more column: the sync claims by the landmark sync measure
        head[2] += " landmark sync check (lse_d_lm, all clips) |"
        head[3] += "---|"
        head[4:] = [row + f" {checks.get(t, '')} |" for row, (t, *_) in zip(head[4:], summary_rows)]
    return "\n".join(intro + head + [""] + lines) + "\n"


def rare_visemes(metrics: dict, base: str, new: str) -> list[str]:
    """Sync distance on the visemes that are rarest in speech (fewest test windows), pooled."""
    sbv = metrics.get("sync_by_viseme", {})
    if "real" not in sbv or base not in sbv or new not in sbv:
        return []
    counts = {v: d["n"] for v, d in sbv["real"].items() if v != "sil"}
    rare = sorted(counts, key=counts.get)[: max(1, len(counts) // 2)]
    lines = ["Sync distance at offset 0 (lower = in sync) on the rarer half of the visemes "
             f"({', '.join(f'{v} n={counts[v]}' for v in rare)}):", "", f"| viseme | real | {base} | {new} |", "|---|---|---|---|"]
    for v in rare:
        lines.append(f"| {v} | {sbv['real'][v]['mean']:.3f} | {sbv[base].get(v, {}).get('mean', np.nan):.3f} | "
                     f"{sbv[new].get(v, {}).get('mean', np.nan):.3f} |")

    def pooled(s):
        d = [(sbv[s][v]["mean"], sbv[s][v]["n"]) for v in rare if v in sbv[s]]
        return sum(m * n for m, n in d) / max(1, sum(n for _, n in d))
    lines += [f"| pooled | {pooled('real'):.3f} | {pooled(base):.3f} | {pooled(new):.3f} |", ""]
    return lines


def stills_lines(stills: dict, systems: list[str]) -> list[str]:
    """The portraits driven by LJ Speech (cross-corpus, no ground truth)."""
    keys = ["sync_dist_at_0", "still_sync_dist_at_0", "mouth_open_range"]
    titles = ["sync dist at 0", "still face", "opening range"]
    if all("sync_dist_at_0_lm" in m for m in stills.values()):
        keys += ["sync_dist_at_0_lm", "still_sync_dist_at_0_lm"]
        titles += ["sync dist at 0 (landmarks)", "still face (landmarks)"]
    lines = ["Portraits driven by LJ Speech (`stills.json`): sync distance at 0 vs the same photo kept still "
             "(lower = in sync), and mouth opening range.", "", "| system | " + " | ".join(titles) + " |",
             "|---|" + "---|" * len(titles)]
    for s in systems:
        rows = [m for m in stills.values() if m.get("system") == s]
        if rows:
            lines.append(f"| {s} | " + " | ".join(f"{np.mean([m[k] for m in rows]):.3f}" for k in keys) + " |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path)
    args = ap.parse_args()
    metrics = json.loads((args.report_dir / "metrics.json").read_text())
    sp = args.report_dir / "stills.json"
    stills = json.loads(sp.read_text()) if sp.is_file() else None
    text = claims_report(metrics, stills)
    (args.report_dir / "claims.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
