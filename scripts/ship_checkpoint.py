"""Copy a trained model into the repo as a shipped checkpoint (float16 weights: half the size,
loaded back as float32), with notes in its meta.

    python scripts/ship_checkpoint.py runs/generator/generator.pt --note "..."
    python scripts/ship_checkpoint.py runs/sync-eval/sync_expert.pt --kind sync -o checkpoints/sync_eval.pt --note "..."
    python scripts/ship_checkpoint.py runs/lip-reader/lip_reader.pt --kind lipread -o checkpoints/lip_reader.pt
"""

import argparse
import json

from talkingface.api import default_checkpoint
from talkingface.config import LipReaderConfig, SyncExpertConfig
from talkingface.inference import load_generator
from talkingface.models.lip_reader import LipReader
from talkingface.models.sync_expert import SyncExpert
from talkingface.training.checkpoint import export_model, load_model


def _load(path: str, kind: str):
    if kind == "generator":
        return load_generator(path)
    if kind == "lipread":
        return load_model(path, "lipread", LipReader, LipReaderConfig)
    return load_model(path, "sync", SyncExpert, SyncExpertConfig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--kind", choices=["generator", "sync", "lipread"], default="generator")
    ap.add_argument("--note", default="")
    ap.add_argument("-o", "--out", default=None, help="default: the package's shipped generator")
    args = ap.parse_args()
    out = args.out or str(default_checkpoint())
    model, cfg, meta = _load(args.checkpoint, args.kind)
    meta = {**meta, "source": args.checkpoint, "note": args.note}
    export_model(out, args.kind, model, cfg, meta, half=True)
    m16, _, _ = _load(out, args.kind)
    worst = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(), m16.state_dict().values())
                if a.is_floating_point())
    print(json.dumps({"out": out, "meta": meta, "max_abs_weight_change_fp16": worst}, indent=1))


if __name__ == "__main__":
    main()
