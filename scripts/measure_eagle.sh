#!/usr/bin/env bash
# EAGLE next to Medusa, speculative, lookahead and prompt lookup, on the reproduction's data:
#   (trajectories, medusa heads, distilled draft of scripts/reproduce.sh, built here when missing)
#   -> train eagle on the same trajectories (the base model's own greedy answers to N_TRAIN
#      GSM8K *train* prompts) -> ONE `cllm-bench run` on N_EVAL held-out GSM8K *test* questions
#   -> cllm-bench report -> results/eagle-gsm8k/
#
# Usage: scripts/measure_eagle.sh [MODEL]     (default: smollm2-135m, the embedded model)
# Environment (defaults = the CPU reproduction's sizes): WORK (runs/reproduce-gsm8k: reuses its
# traj/, medusa/, draft/), RESULTS (results/eagle-gsm8k), DATA (../shared/data), N_TRAIN (300),
# N_EVAL (20), MAX_NEW (64), EAGLE_LR (1e-3), EAGLE_EPOCHS (4), DRAFT_LAYERS (6).
#
# Measured on the project's 2-core CPU (2026-11-29, results/eagle-gsm8k/commands.md): answers
# for 300 prompts 770 s, EAGLE head 631 s, distilled draft 205 s, the run 817 s (Medusa's
# 4254 s there include a 50-minute pause; ~11 min otherwise) -- about 1 h from scratch.
# The run has two EAGLE rows: the reference tree (60 tokens verified per forward — costly on a
# CPU, where a 60-token forward costs several 1-token ones) and a small tree for CPUs.
set -euo pipefail
MODEL=${1:-smollm2-135m}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/reproduce-gsm8k}
RESULTS=${RESULTS:-results/eagle-gsm8k}
N_TRAIN=${N_TRAIN:-300}
N_EVAL=${N_EVAL:-20}
MAX_NEW=${MAX_NEW:-64}
EAGLE_LR=${EAGLE_LR:-1e-3}
EAGLE_EPOCHS=${EAGLE_EPOCHS:-4}
DRAFT_LAYERS=${DRAFT_LAYERS:-6}
CPU_FLAG=(); python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || CPU_FLAG=(--cpu)
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/commands.md"
if [ -f "$LOG" ]; then  # a second invocation (e.g. after STOP_AFTER=train) appends to the same log
  echo "resumed $(date -u +%FT%TZ)" >> "$LOG"
else {
  echo "# EAGLE measurement log (gsm8k)"
  echo
  echo "model: $MODEL; train prompts: $N_TRAIN; eval questions: $N_EVAL; max new tokens: $MAX_NEW; started $(date -u +%FT%TZ)"
  echo
  echo "| step | command | wall time (s) |"
  echo "| --- | --- | ---: |"
} > "$LOG"
fi

# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

# The three trainers read only the target's greedy answers (answer_ids) from the trajectories
# folder, so when it is missing the packed collector makes them with batched `ar` and noised
# states (no Jacobi forwards): the same answers as the reproduction's Jacobi collector, minutes
# instead of ~35 on a CPU.
[ -f "$WORK/traj/trajectories.jsonl" ] || step trajectories cllm-bench train trajectories --model "$MODEL" \
  --prompts gsm8k --data-dir "$DATA" --n 16 --max-new-tokens "$MAX_NEW" --limit "$N_TRAIN" --out "$WORK/traj" \
  --collector packed --states noised --noised-per-block 1 --batch-size 8 "${CPU_FLAG[@]}"
[ -f "$WORK/medusa/medusa_config.json" ] || step medusa cllm-bench train medusa --model "$MODEL" --data "$WORK/traj" \
  --heads 4 --out "$WORK/medusa" "${CPU_FLAG[@]}"
[ -f "$WORK/draft/config.json" ] || step draft cllm-bench train draft --model "$MODEL" \
  --draft-init self:layers=$DRAFT_LAYERS --data "$WORK/traj" --out "$WORK/draft" "${CPU_FLAG[@]}"
[ -f "$WORK/eagle/config.json" ] || step eagle cllm-bench train eagle --model "$MODEL" --data "$WORK/traj" --out "$WORK/eagle" \
  --lr "$EAGLE_LR" --epochs "$EAGLE_EPOCHS" --warmup-ratio 0.05 "${CPU_FLAG[@]}"

# STOP_AFTER=train: build the heads and the draft only (run the timed part later, on an idle machine)
[ "${STOP_AFTER:-}" = train ] && { echo "stopped after training (STOP_AFTER=train)" >> "$LOG"; exit 0; }

step run cllm-bench run --models "$MODEL" --output-path "$WORK/run-eagle" --tasks gsm8k --data-dir "$DATA" \
  --limit "$N_EVAL" --max-new-tokens "$MAX_NEW" --repeats 1 --warmup 1 \
  --decoders "ar;eagle:head=$WORK/eagle;eagle:head=$WORK/eagle,depth=3,top_k=4,total_tokens=16;medusa:heads=$WORK/medusa;speculative:draft=$WORK/draft,k=4;lookahead;prompt_lookup"
step report cllm-bench report "$WORK/run-eagle" --output "$RESULTS"

cp "$WORK/run-eagle/summary.json" "$RESULTS/summary.json"
for m in traj medusa draft eagle; do
  [ -f "$WORK/$m/manifest.json" ] && cp "$WORK/$m/manifest.json" "$RESULTS/manifest-$m.json"
done
echo "finished $(date -u +%FT%TZ)" >> "$LOG"
