"""Clip-by-clip comparison of models scored in different `talkingface evaluate` runs.

    python scripts/compare_reports.py results/eval-v10:talkingface results/eval-v10:v7-scratch runs/eval-x:generator

Each argument is REPORT_FOLDER:SYSTEM (a checkpoint's name in that report's metrics.json). The
first is the baseline; every other is compared with it on the clips both reports scored, with the
report's own paired measures (`evaluate.paired_comparisons`: mean gain, positive = better, 95%
bootstrap interval over clips, on how many clips better). Valid only for reports of the same
corpus and split: evaluation is deterministic, so a model's per-clip values do not depend on which
run scored it (checked for the shipped model across eval-v10 and eval-test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from talkingface.evaluation.evaluate import paired_comparisons


def compare(specs: list[str]) -> str:
    """The markdown tables: each REPORT_FOLDER:SYSTEM of ``specs[1:]`` against ``specs[0]``, over all
    shared clips and within each group the reports name ("unseen sentences", "unseen speakers")."""
    per_clip: dict[str, dict] = {}
    group_of: dict[str, str] = {}
    labels = []
    for spec in specs:
        folder, _, system = spec.rpartition(":")
        report = Path(folder) / "metrics.json"
        if not report.is_file():
            raise SystemExit(f"{spec}: no {report} (give REPORT_FOLDER:SYSTEM, the folder `talkingface evaluate -o` wrote)")
        m = json.loads(report.read_text())
        label = f"{Path(folder).name}:{system}"
        if label in labels:
            raise SystemExit(f"{spec}: given twice")
        labels.append(label)
        group_of_speaker = {spk: g for g, info in m["by_group"].items() for spk in info["speakers"]}
        for clip, rows in m["per_clip"].items():
            if system not in rows:
                raise SystemExit(f"{spec}: no system {system!r} in {folder}/metrics.json (it has {sorted(rows)})")
            per_clip.setdefault(clip, {})[label] = rows[system]
            group_of[clip] = group_of_speaker[clip.split("/")[0]]
    common = [c for c, r in per_clip.items() if all(lab in r for lab in labels)]
    if not common:
        raise SystemExit("the reports share no clip")
    per_clip = {c: per_clip[c] for c in common}
    groups = {g: [c for c in common if group_of[c] == g] for g in sorted({group_of[c] for c in common})}
    names = ["all", *groups]
    out = []
    for pair, by_key in paired_comparisons(per_clip, groups).items():
        out += ["", f"{pair} ({len(common)} clips; positive = the second better)", "",
                "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, by_group in by_key.items():
            cells = [f"{c['a']:.3f} -> {c['b']:.3f}: {c['gain']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] {c['better']}/{c['n']}"
                     if c.get("n") else "" for c in (by_group[g] for g in names)]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="+", help="REPORT_FOLDER:SYSTEM, the baseline first")
    args = ap.parse_args()
    if len(args.systems) < 2:
        ap.error("give a baseline and at least one system to compare with it")
    print(compare(args.systems))


if __name__ == "__main__":
    main()
