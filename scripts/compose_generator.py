"""Pair a separately trained audio -> motion half with an existing renderer that draws the
landmark motion alone (``generator.decoder_input = "motion"``), without training the renderer again.

    talkingface train --config configs/history/generator-v4.toml --set steps=1500 --set augment_speed=0.25 \
        --run-dir runs/motion-speed                      # the trainer's stage 0 only: ~12 min
    python scripts/compose_generator.py --motion runs/motion-speed/generator.pt \
        --renderer runs/generator-v4/generator.pt -o runs/generator-v4-speed/generator.pt
"""

import argparse
import json
from pathlib import Path

from talkingface.inference import load_generator
from talkingface.models.generator import combine_motion_and_renderer
from talkingface.training.checkpoint import export_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--motion", required=True, help="generator checkpoint whose audio -> motion half is taken")
    ap.add_argument("--renderer", required=True, help="generator checkpoint whose identity encoder and decoder are taken")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    mover, _, mmeta = load_generator(args.motion)
    drawer, _, rmeta = load_generator(args.renderer)
    g = combine_motion_and_renderer(mover, drawer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"motion_from": args.motion, "renderer_from": args.renderer, "motion_meta": mmeta, "renderer_meta": rmeta}
    export_model(args.out, "generator", g, g.cfg, meta)  # the motion half's config: it says what it hears
    print(json.dumps({"out": args.out, "motion_from": args.motion, "renderer_from": args.renderer}))


if __name__ == "__main__":
    main()
