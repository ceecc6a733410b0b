#!/usr/bin/env bash
# Reproduces results/eval-test/ from a fresh clone with the shipped checkpoints:
# prepares the corpus from ../shared/train (skipped if present), then evaluates the shipped
# generator on the held-out test split and on the public-domain portraits, with the shipped
# evaluation sync expert (checkpoints/sync_eval.pt). About 10 minutes on 2 CPU cores.
#   bash scripts/reproduce_results.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/eval-test}"
shared="${SHARED:-../shared}"
[ -f corpora/train/manifest.jsonl ] || talkingface prepare "$shared/train" corpora/train
talkingface evaluate --checkpoint src/talkingface/assets/talkingface.pt --corpus corpora/train --split test \
    --sync-model checkpoints/sync_eval.pt --portraits "$shared/data/portraits" --speech "$shared/data/speech" -o "$out"
