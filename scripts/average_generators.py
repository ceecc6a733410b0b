"""Average the weights of generators that branched from one checkpoint (a "model soup").

The branches must share their training up to a point (e.g. the same run resumed from one
snapshot with another critic or seed): only then do their weights lie in one basin, where the
average is itself a good model. Generators trained apart from step 0 do not average.

    python scripts/average_generators.py runs/v14-seed0/generator.pt runs/v14-s0-lipread/generator.pt \
        -o runs/soup-s0/generator.pt
"""

import argparse
import json
from pathlib import Path

import torch

from talkingface.config import to_dict
from talkingface.errors import TalkingFaceError
from talkingface.inference import load_generator
from talkingface.training.checkpoint import export_model


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating tensor; integer buffers (BatchNorm's batch count) are the first's."""
    keys = state_dicts[0].keys()
    if any(sd.keys() != keys for sd in state_dicts):
        raise TalkingFaceError("the generators have different layers: not branches of one model")
    out = {}
    for k in keys:
        ts = [sd[k] for sd in state_dicts]
        if any(t.shape != ts[0].shape for t in ts):
            raise TalkingFaceError(f"{k}: shapes differ {[tuple(t.shape) for t in ts]}")
        out[k] = torch.stack(ts).mean(0) if ts[0].is_floating_point() else ts[0].clone()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generators", nargs="+", help="exported generator checkpoints (generator.pt) to average")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    if len(args.generators) < 2:
        ap.error("give at least two generators")
    loaded = [load_generator(p) for p in args.generators]
    if any(to_dict(c) != to_dict(loaded[0][1]) for _, c, _ in loaded):
        raise SystemExit("error: the generators' configs differ: not branches of one model")
    g, cfg, _ = loaded[0]  # equal configs: equal layers and shapes, so the average loads
    g.load_state_dict(average_state_dicts([m.state_dict() for m, _, _ in loaded]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"average_of": args.generators, "members_meta": [m for _, _, m in loaded]}
    export_model(args.out, "generator", g, cfg, meta)
    print(json.dumps({"out": args.out, "average_of": args.generators}))


if __name__ == "__main__":
    main()
