#!/usr/bin/env bash
# The CLLM demonstration on Spider, sized for a 2-core CPU (issue 16):
#   trajectories (packed collector: batched greedy `ar` answers + every block's Jacobi
#   states, one packed forward per iteration) on Spider *train* questions
#   -> train cllm (packed step, learning curves on Spider *dev* questions never trained on)
# then scripts/cllm_spider_cpu_eval.sh measures base vs CLLM on held-out dev questions.
# Sizes (environment): N_TRAIN prompts (300), MAX_NEW tokens per answer (48), N block size (16),
# EPOCHS (2), LR (1e-4), SPB states per block per update (4), EVAL_EVERY updates (100),
# THREADS torch threads (1: a second job on the other core cannot stall it).
# WORK (runs/cllm-spider: checkpoints, resumable), RESULTS (results/cllm-spider: manifests, log).
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/cllm-spider}
RESULTS=${RESULTS:-results/cllm-spider}
N_TRAIN=${N_TRAIN:-300}; MAX_NEW=${MAX_NEW:-48}; N=${N:-16}; EPOCHS=${EPOCHS:-2}; LR=${LR:-1e-4}
SPB=${SPB:-4}; EVAL_EVERY=${EVAL_EVERY:-100}; EVAL_LIMIT=${EVAL_LIMIT:-6}
export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/commands.md"
# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
start_log "CLLM on Spider, CPU (issue 16)" \
  "N_TRAIN=$N_TRAIN MAX_NEW=$MAX_NEW N=$N EPOCHS=$EPOCHS LR=$LR SPB=$SPB EVAL_EVERY=$EVAL_EVERY THREADS=$OMP_NUM_THREADS scripts/cllm_spider_cpu.sh"
[ -f "$WORK/traj/trajectories.jsonl" ] || step trajectories cllm-bench train trajectories --model "$MODEL" --prompts spider \
  --data-dir "$DATA" --n "$N" --max-new-tokens "$MAX_NEW" --limit "$N_TRAIN" --batch-size 8 --collector packed \
  --out "$WORK/traj" --cpu
cp "$WORK/traj/manifest.json" "$RESULTS/manifest-traj.json"
step cllm cllm-bench train cllm --model "$MODEL" --trajectories "$WORK/traj" --out "$WORK/cllm" --lr "$LR" \
  --epochs "$EPOCHS" --states-per-block "$SPB" --label-smoothing 0 --eval-every "$EVAL_EVERY" --eval-prompts spider \
  --eval-split dev --eval-limit "$EVAL_LIMIT" --eval-max-new-tokens "$MAX_NEW" --data-dir "$DATA" --save-every 50 --cpu
cp "$WORK/cllm/manifest.json" "$RESULTS/manifest-cllm.json"
echo "finished training $(date -u +%FT%TZ)" >> "$LOG"
