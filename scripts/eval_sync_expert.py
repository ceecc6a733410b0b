"""AUC / accuracy of a sync expert at telling true audio from audio shifted by >= 0.5 s, per
speaker group of a corpus split.

    python scripts/eval_sync_expert.py runs/sync-expert/sync_expert.pt corpora/train --split test
"""

import argparse
import json

import torch

from talkingface.config import DataConfig, SyncExpertConfig, config_from_json
from talkingface.data.corpus import read_manifest
from talkingface.data.dataset import load_clips
from talkingface.models.sync_expert import SyncExpert
from talkingface.training.checkpoint import load_model
from talkingface.training.sync_metrics import evaluate_sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("corpus")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    expert, _, meta = load_model(args.checkpoint, "sync", SyncExpert, SyncExpertConfig)
    cfg = config_from_json(DataConfig, f"{args.corpus}/config.json")
    rows = [r for r in read_manifest(args.corpus) if r["split"] == args.split]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["speaker"], []).append(r)
    motion = expert.cfg.visual == "landmarks"  # a landmark expert reads mouth motion detected on the crops
    clips = {r["clip"]: c for r, c in zip(rows, load_clips(args.corpus, rows, cfg, motion=motion))}
    out = {}
    for speaker, rs in sorted(groups.items()):
        out[speaker] = {"clips": len(rs), **evaluate_sync(expert, [clips[r["clip"]] for r in rs], max_windows=10**6)}
    out["all"] = {"clips": len(rows), **evaluate_sync(expert, list(clips.values()), max_windows=10**6)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
