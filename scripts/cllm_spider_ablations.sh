#!/usr/bin/env bash
# Issue 16's recipe ablations, sized for a 2-core CPU: what raises Jacobi acceptance where the
# model HAS seen the fixed points? Every variant trains SmolLM2-135M-Instruct on the same first
# N_PROMPTS Spider *train* prompts for EPOCHS epochs (same cosine schedule per variant) and
# Jacobi-decodes exactly those prompts every EVAL_EVERY updates (the learning curve's training
# set; no held-out set: with so few prompts the held-out answers drift, which the capacity run
# `overfit` shows). Only counts are reported (tokens per forward, fast-forwarded, stationary,
# match_base): they do not depend on the machine's load, so variants may share the CPU.
#
# Variants (one changed setting each against `reference`: packed step, global consistency,
# AR weight 10, lr 1e-4, 4 states per block, true Jacobi states, n = 16):
#   reference, window3 (--consistency-window 3), arw1 (--ar-weight 1), lr3e-5,
#   local (--consistency local, the per-record step: 1 state per record and update),
#   noised (correct prefix + random suffix states instead of Jacobi states), n8 (block size 8).
# Sizes (environment): N_PROMPTS (8), EPOCHS (10), EVAL_EVERY (40), MAX_NEW (48), THREADS (1),
# TRAJ (a trajectories folder with n = 16 Jacobi states of Spider train prompts, from
# scripts/cllm_spider_cpu.sh), VARIANTS (all, in the order above), WORK, RESULTS.
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/cllm-spider-ablations}
RESULTS=${RESULTS:-results/cllm-spider-ablations}
TRAJ=${TRAJ:-runs/cllm-spider/traj}
N_PROMPTS=${N_PROMPTS:-8}; EPOCHS=${EPOCHS:-10}; EVAL_EVERY=${EVAL_EVERY:-40}; MAX_NEW=${MAX_NEW:-48}
VARIANTS=${VARIANTS:-reference window3 arw1 lr3e-5 local noised n8}
export OMP_NUM_THREADS=${THREADS:-1}
[ -f "$TRAJ/trajectories.jsonl" ] || { echo "TRAJ=$TRAJ has no trajectories.jsonl (run scripts/cllm_spider_cpu.sh first)" >&2; exit 2; }
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/commands.md"
# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
start_log "CLLM recipe ablations on Spider, CPU (issue 16)" \
  "N_PROMPTS=$N_PROMPTS EPOCHS=$EPOCHS EVAL_EVERY=$EVAL_EVERY MAX_NEW=$MAX_NEW THREADS=$OMP_NUM_THREADS TRAJ=$TRAJ VARIANTS='$VARIANTS' scripts/cllm_spider_ablations.sh" \
  "Counts only: other jobs shared the CPU, so the seconds below are not a speed measurement."
collect() {  # collect NAME ARGS... : trajectories of the first N_PROMPTS prompts
  local out="$WORK/traj-$1"; shift
  [ -f "$out/trajectories.jsonl" ] || step "trajectories $(basename "$out")" cllm-bench train trajectories --model "$MODEL" \
    --prompts spider --data-dir "$DATA" --max-new-tokens "$MAX_NEW" --limit "$N_PROMPTS" --batch-size 8 \
    --collector packed --out "$out" --cpu "$@"
}
for variant in $VARIANTS; do
  traj=$TRAJ; extra=(--lr 1e-4)
  case $variant in
    reference) ;;
    window3) extra+=(--consistency-window 3) ;;
    arw1) extra+=(--ar-weight 1) ;;
    lr3e-5) extra=(--lr 3e-5) ;;
    local) extra+=(--consistency local --no-packed) ;;
    noised) collect noised --n 16 --states noised; traj=$WORK/traj-noised ;;
    n8) collect n8 --n 8; traj=$WORK/traj-n8 ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  out="$WORK/$variant"
  [ -f "$out/manifest.json" ] || step "$variant" cllm-bench train cllm --model "$MODEL" --trajectories "$traj" --out "$out" \
    --max-prompts "$N_PROMPTS" --epochs "$EPOCHS" --states-per-block 4 --label-smoothing 0 "${extra[@]}" \
    --eval-every "$EVAL_EVERY" --eval-limit "$N_PROMPTS" --eval-max-new-tokens "$MAX_NEW" --save-every 0 --cpu
  cp "$out/manifest.json" "$RESULTS/manifest-$variant.json"
done
python scripts/curves_table.py "$RESULTS"/manifest-*.json > "$RESULTS/curves.md"
echo "finished $(date -u +%FT%TZ)" >> "$LOG"
