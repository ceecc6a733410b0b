"""Copy a trained generator into the package as the shipped checkpoint (float16 weights: half the
size, loaded back as float32), with notes in its meta.

    python scripts/ship_checkpoint.py runs/generator/generator.pt --note "..."
"""

import argparse
import json

import torch

from talkingface.api import default_checkpoint
from talkingface.inference import load_generator
from talkingface.training.checkpoint import export_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--note", default="")
    ap.add_argument("-o", "--out", default=str(default_checkpoint()))
    args = ap.parse_args()
    g, cfg, meta = load_generator(args.checkpoint)
    meta = {**meta, "source": args.checkpoint, "note": args.note}
    export_model(args.out, "generator", g, cfg, meta, half=True)
    g16, _, _ = load_generator(args.out)
    worst = max(float((a - b).abs().max()) for a, b in zip(g.state_dict().values(), g16.state_dict().values())
                if a.is_floating_point())
    print(json.dumps({"out": args.out, "meta": meta, "max_abs_weight_change_fp16": worst}, indent=1))
    torch.set_num_threads(1)


if __name__ == "__main__":
    main()
