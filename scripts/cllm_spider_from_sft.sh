#!/usr/bin/env bash
# Issue 16, the paper's setting at small scale: the CLLM starts from a target fine-tuned on
# the task (the reference's target is deepseek-coder fine-tuned on Spider). Needs the SFT
# model of scripts/cllm_spider_sft_control.sh (SFT=runs/cllm-spider-sft/sft).
#   Jacobi trajectories of the SFT model on the first N_TRAIN Spider *train* prompts
#   -> train cllm from the SFT model, EPOCHS epochs, learning curves every EVAL_EVERY updates
#      on EVAL_LIMIT Spider *dev* questions (never trained on) and EVAL_LIMIT trained prompts.
# Counts only (tokens per forward, fast-forwarded, stationary, match_base, exact-set match):
# other jobs may share the CPU, so the seconds are not a speed measurement.
# Status: not yet run (the SFT model it needs was not trained to completion; see
# scripts/cllm_spider_sft_control.sh). Nothing from it is reported.
# Sizes (environment): N_TRAIN (64), EPOCHS (5), LR (1e-4), N (16), MAX_NEW (48),
# EVAL_EVERY (64), EVAL_LIMIT (8), THREADS (1), SFT, WORK, RESULTS.
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
SFT=${SFT:-runs/cllm-spider-sft/sft}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/cllm-spider-from-sft}
RESULTS=${RESULTS:-results/cllm-spider-from-sft}
N_TRAIN=${N_TRAIN:-64}; EPOCHS=${EPOCHS:-5}; LR=${LR:-1e-4}; N=${N:-16}; MAX_NEW=${MAX_NEW:-48}
EVAL_EVERY=${EVAL_EVERY:-64}; EVAL_LIMIT=${EVAL_LIMIT:-8}
export OMP_NUM_THREADS=${THREADS:-1}
[ -f "$SFT/config.json" ] || { echo "SFT=$SFT holds no model (run scripts/cllm_spider_sft_control.sh first)" >&2; exit 2; }
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/commands.md"
# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
start_log "CLLM from the Spider-SFT model, CPU (issue 16)" \
  "SFT=$SFT N_TRAIN=$N_TRAIN EPOCHS=$EPOCHS LR=$LR N=$N MAX_NEW=$MAX_NEW EVAL_EVERY=$EVAL_EVERY EVAL_LIMIT=$EVAL_LIMIT THREADS=$OMP_NUM_THREADS scripts/cllm_spider_from_sft.sh" \
  "Counts only: other jobs shared the CPU, so the seconds below are not a speed measurement."
[ -f "$WORK/traj/trajectories.jsonl" ] || step trajectories cllm-bench train trajectories --model "$SFT" --prompts spider \
  --data-dir "$DATA" --n "$N" --max-new-tokens "$MAX_NEW" --limit "$N_TRAIN" --batch-size 8 --collector packed \
  --out "$WORK/traj" --cpu
cp "$WORK/traj/manifest.json" "$RESULTS/manifest-traj.json"
[ -f "$WORK/cllm/manifest.json" ] || step cllm cllm-bench train cllm --model "$SFT" --trajectories "$WORK/traj" \
  --out "$WORK/cllm" --lr "$LR" --epochs "$EPOCHS" --states-per-block 4 --label-smoothing 0 --eval-every "$EVAL_EVERY" \
  --eval-prompts spider --eval-split dev --eval-limit "$EVAL_LIMIT" --eval-max-new-tokens "$MAX_NEW" --data-dir "$DATA" \
  --save-every "$EVAL_EVERY" --cpu
cp "$WORK/cllm/manifest.json" "$RESULTS/manifest-cllm.json"
python scripts/curves_table.py "$RESULTS/manifest-cllm.json" > "$RESULTS/curves.md"
echo "finished $(date -u +%FT%TZ)" >> "$LOG"
