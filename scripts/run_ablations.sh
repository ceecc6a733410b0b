#!/usr/bin/env bash
# Trains every ablation row of the evaluation issue on the same budget (configs/ablations/base.toml),
# one after another (never two trainings at once on 2 cores), resuming any run that was cut off,
# then evaluates them all in one report:
#   bash scripts/run_ablations.sh [OUT_DIR]        # ~3 h on 2 cores; safe to re-run after a kill
# Needs the prepared corpus, both selections and the training critic (see README "From videos to a model").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/ablations}"
declare -A rows=(
  [full]=""                                                        # GRU + frame D + sequence D + sync critic
  [no-gru]="generator.recurrent=false"                             # the paper's frame-wise baseline
  [gru-no-adv]="loss.frame_adv=0 loss.seq_adv=0 loss.sync=0"       # GRU, L1 + landmarks only
  [gru-frame-d]="loss.seq_adv=0 loss.sync=0"                       # + frame discriminator
  [gru-frame-seq-d]="loss.sync=0"                                  # + sequence discriminator
  [random-selection]="selection=random-phoneme-240"                # full model, random instead of balanced clips
  [paint]="generator.render=paint"                                 # the paper's painting decoder instead of warping
  [wav2lip-style]="generator.render=paint generator.recurrent=false loss.seq_adv=0"  # frame-wise mouth in-painting peer
)
order=(full no-gru gru-frame-seq-d paint gru-frame-d gru-no-adv wav2lip-style random-selection)
ckpts=()
for name in "${order[@]}"; do
  run="runs/ablations/$name"
  sets=(--set "name=$name")
  for kv in ${rows[$name]}; do sets+=(--set "$kv"); done
  if [ ! -f "$run/generator.pt" ]; then
    if [ -f "$run/checkpoint.pt" ]; then
      talkingface train --resume "$run" -q
    else
      rm -rf "$run"
      talkingface train --config configs/ablations/base.toml --run-dir "$run" "${sets[@]}" -q
    fi
  fi
  ckpts+=(--checkpoint "$run/generator.pt")
done
# 16 test clips = all 8 of the unseen speakers + 8 unseen s1 sentences (evaluate takes held-out
# speakers first), to keep 8 checkpoints to ~15 min; the stills test is the cross-corpus protocol.
talkingface evaluate "${ckpts[@]}" --corpus corpora/train --split test --max-clips 16 --no-keep-expression \
    --portraits ../shared/data/portraits --speech ../shared/data/speech -o "$out" -q
python scripts/ablation_claims.py "$out" > /dev/null   # -> $out/claims.md
