#!/usr/bin/env bash
# Trains the shipped generator from a fresh clone (configs/generator.toml: a motion stage that
# hands on its weight average, the renderer with frame and sequence critics, then the paper's
# lip-reading critic, and a weight average over the adversarial phase as the export), one stage
# after another, and prints each stage's wall time: corpus, phoneme-balanced selection, the
# lip-reading critic (a viseme reader on seed 1), the generator, and its fp16 export (the shipped
# checkpoint is one such export). Safe to re-run after a kill: finished stages are skipped and a
# cut-off training resumes from its last checkpoint (times.tsv then holds only the stages'
# finishing sittings: the time lost to the kill is not in the total).
#   bash scripts/train_from_scratch.sh [RUN_ROOT]       # about 71 min on 2 CPU cores (measured 2026-11-27)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-runs/from-scratch}"
shared="${SHARED:-../shared}"
mkdir -p "$root"
times="$root/times.tsv"
[ -f "$times" ] || printf 'stage\tstart\tend\tseconds\n' > "$times"

stage() {  # stage NAME COMMAND...: runs COMMAND and appends its wall time to times.tsv
  local name="$1"; shift
  local t0; t0=$(date +%s)
  "$@"
  local t1; t1=$(date +%s)
  printf '%s\t%s\t%s\t%s\n' "$name" "$(date -u -d "@$t0" +%FT%TZ)" "$(date -u -d "@$t1" +%FT%TZ)" $((t1 - t0)) >> "$times"
  echo "$name: $((t1 - t0)) s"
}

train() {  # train RUN_DIR ARGS...: a fresh run, or --resume of a cut-off one
  local run="$1"; shift
  if [ -f "$run/checkpoint.pt" ]; then talkingface train --resume "$run" -q
  else rm -rf "$run"; talkingface train --run-dir "$run" -q "$@"; fi
}

[ -f corpora/train/manifest.jsonl ] || stage corpus talkingface prepare "$shared/train" corpora/train
[ -f corpora/train/selections/balanced-phoneme-240.json ] \
  || stage selection talkingface select corpora/train --size 240 --strategy balanced
[ -f "$root/lip-reader-critic/lip_reader.pt" ] \
  || stage lipread-critic train "$root/lip-reader-critic" --config configs/lip_reader.toml --set seed=1
[ -f "$root/generator/generator.pt" ] \
  || stage generator train "$root/generator" --config configs/generator.toml \
       --set name=generator-from-scratch --set "lipread_checkpoint=$root/lip-reader-critic/lip_reader.pt"
[ "$root/generator/generator-fp16.pt" -nt "$root/generator/generator.pt" ] \
  || stage export python scripts/ship_checkpoint.py "$root/generator/generator.pt" -o "$root/generator/generator-fp16.pt"
awk -F'\t' 'NR > 1 { s += $4 } END { printf "from scratch: %.1f min of wall time (%s)\n", s / 60, FILENAME }' "$times"
