#!/usr/bin/env bash
# Reproduce the CLLM pipeline on GSM8K with cllm-bench's own commands:
#   trajectories (base model) -> train cllm -> train medusa -> train draft -> train sft
#   -> cllm-bench run (ar, jacobi, cllm, cllm+lookahead, lookahead, speculative, medusa, hf)
#   -> cllm-bench report  -> results/reproduce-gsm8k/
#
# Usage: TASK=gsm8k|spider scripts/reproduce.sh [MODEL]   (default: smollm2-135m, the embedded model)
# (scripts/reproduce_gsm8k.sh and scripts/reproduce_spider.sh set TASK)
# Sizes (environment): N_TRAIN prompts for trajectories/training (default 5000 on GPU, 300 on CPU),
# N_EVAL test questions (default 500 / 20), MAX_NEW tokens per answer (256 / 64), N block size (16),
# CLLM_STEPS optimiser updates for `train cllm` (all / 300), CLLM_LR (2e-5 / 1e-4), DATA (../shared/data),
# DRAFT_LAYERS decoder layers of the base kept for the distilled draft's initialisation (6).
# (the CPU defaults are the committed results/reproduce-gsm8k run: about 1 h 40 min on 2 cores)
# WORK (runs/reproduce-gsm8k: checkpoints, never committed), RESULTS (results/reproduce-gsm8k).
# BUDGET_S=540: budget mode (trajectories -> train cllm -> run -> report only), sizes planned by
# `cllm-bench train plan` from throughput probed on this device so the whole pipeline fits.
set -euo pipefail
TASK=${TASK:-gsm8k}
MODEL=${1:-smollm2-135m}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/reproduce-$TASK}
RESULTS=${RESULTS:-results/reproduce-$TASK}
if python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPU=1; : "${N_TRAIN:=5000}" "${N_EVAL:=500}" "${MAX_NEW:=256}" "${CLLM_LR:=2e-5}" "${CLLM_STEPS:=0}" "${BATCH:=32}"
else
  GPU=0; : "${N_TRAIN:=300}" "${N_EVAL:=20}" "${MAX_NEW:=64}" "${CLLM_LR:=1e-4}" "${CLLM_STEPS:=300}" "${BATCH:=1}"
fi
N=${N:-16}
DRAFT_LAYERS=${DRAFT_LAYERS:-6}
if [ -n "${BUDGET_S:-}" ]; then
  # budget mode: trajectories -> train cllm -> run -> report only, sized from throughput probed
  # on this device (cllm-bench train plan; see docs/training.md "A reproduction in a time budget")
  mkdir -p "$WORK" "$RESULTS"
  PLAN_T0=$SECONDS
  eval "$(cllm-bench train plan --model "$MODEL" --prompts "$TASK" --data-dir "$DATA" --budget-s "$BUDGET_S" \
    --n "$N" --max-new-tokens "$MAX_NEW" --decoders 2 ${MAX_TRAIN:+--max-train "$MAX_TRAIN"} ${MAX_EVAL:+--max-eval "$MAX_EVAL"} \
    --out "$RESULTS/plan.json" | tail -n 1)"
  PLAN_S=$((SECONDS - PLAN_T0))
  EXEC=(); [ "$TASK" != "gsm8k" ] && EXEC=(--allow-code-execution)
  LOG="$RESULTS/commands.md"
  {
    echo "# Reproduction in a budget ($TASK): ${BUDGET_S}s; plan: N_TRAIN=$N_TRAIN N_EVAL=$N_EVAL EPOCHS=$EPOCHS predicted ${PREDICTED_S}s (plan.json)"
    echo
    echo "| step | command | wall time (s) |"
    echo "| --- | --- | ---: |"
    echo "| plan | \`cllm-bench train plan ... --budget-s $BUDGET_S\` | $PLAN_S |"
  } > "$LOG"
  bstep() { local name=$1; shift; local t0=$SECONDS; echo ">>> $name: $*"; "$@"; echo "| $name | \`$*\` | $((SECONDS - t0)) |" >> "$LOG"; }
  bstep trajectories cllm-bench train trajectories --model "$MODEL" --prompts "$TASK" --data-dir "$DATA" --n "$N" \
    --max-new-tokens "$MAX_NEW" --limit "$N_TRAIN" --batch-size "$BATCH" --collector packed --out "$WORK/traj"
  bstep cllm cllm-bench train cllm --model "$MODEL" --trajectories "$WORK/traj" --out "$WORK/cllm" --lr "$CLLM_LR" \
    --epochs "$EPOCHS" --label-smoothing 0 --save-every 0
  bstep run cllm-bench run --models "$MODEL,$WORK/cllm" --output-path "$WORK/run" "${EXEC[@]}" --tasks "$TASK" \
    --data-dir "$DATA" --limit "$N_EVAL" --max-new-tokens "$MAX_NEW" --repeats 1 --warmup 1 --decoders "ar;jacobi:n=$N"
  bstep report cllm-bench report "$WORK/run" --output "$RESULTS"
  cp "$WORK/run/summary.json" "$RESULTS/summary.json"
  for m in traj cllm; do cp "$WORK/$m/manifest.json" "$RESULTS/manifest-$m.json"; done
  echo "finished $(date -u +%FT%TZ); total $SECONDS s" >> "$LOG"
  exit 0
fi
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/commands.md"
{
  echo "# Reproduction log ($TASK)"
  echo
  echo "model: $MODEL; GPU: $GPU; train prompts: $N_TRAIN; eval questions: $N_EVAL; max new tokens: $MAX_NEW;"
  echo "block size n: $N; cllm lr: $CLLM_LR; cllm max steps: ${CLLM_STEPS} (0 = one full epoch); started $(date -u +%FT%TZ)"
  echo
  echo "invocation: \`N_TRAIN=$N_TRAIN N_EVAL=$N_EVAL MAX_NEW=$MAX_NEW CLLM_STEPS=$CLLM_STEPS CLLM_LR=$CLLM_LR BATCH=$BATCH TASK=$TASK WORK=$WORK RESULTS=$RESULTS scripts/reproduce.sh $MODEL\`"
  echo
  echo "| step | command | wall time (s) |"
  echo "| --- | --- | ---: |"
} > "$LOG"

# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

STEPS_FLAG=(); [ "$CLLM_STEPS" != "0" ] && STEPS_FLAG=(--max-steps "$CLLM_STEPS")
CPU_FLAG=(); [ "$GPU" = "0" ] && CPU_FLAG=(--cpu)

step trajectories cllm-bench train trajectories --model "$MODEL" --prompts "$TASK" --data-dir "$DATA" \
  --n "$N" --max-new-tokens "$MAX_NEW" --limit "$N_TRAIN" --batch-size "$BATCH" --out "$WORK/traj" "${CPU_FLAG[@]}"
step cllm cllm-bench train cllm --model "$MODEL" --trajectories "$WORK/traj" --out "$WORK/cllm" \
  --lr "$CLLM_LR" "${STEPS_FLAG[@]}" "${CPU_FLAG[@]}"
step medusa cllm-bench train medusa --model "$MODEL" --data "$WORK/traj" --heads 4 --out "$WORK/medusa" \
  "${CPU_FLAG[@]}"
step draft cllm-bench train draft --model "$MODEL" --draft-init self:layers=$DRAFT_LAYERS --data "$WORK/traj" \
  --out "$WORK/draft" "${CPU_FLAG[@]}"
step sft cllm-bench train sft --model "$MODEL" --data "$TASK" --data-dir "$DATA" --limit "$N_TRAIN" \
  --out "$WORK/sft" "${STEPS_FLAG[@]}" "${CPU_FLAG[@]}"

EXEC=(); [ "$TASK" != "gsm8k" ] && EXEC=(--allow-code-execution)  # Spider/HumanEval scoring runs SQL/code
COMMON=("${EXEC[@]}" --tasks "$TASK" --data-dir "$DATA" --limit "$N_EVAL" --max-new-tokens "$MAX_NEW" --repeats 1 --warmup 1)
step run-base cllm-bench run --models "$MODEL" --output-path "$WORK/run-base" "${COMMON[@]}" \
  --decoders "ar;jacobi:n=$N;lookahead;prompt_lookup;speculative:draft=$WORK/draft,k=4;medusa:heads=$WORK/medusa;hf"
step run-cllm cllm-bench run --models "$WORK/cllm" --output-path "$WORK/run-cllm" "${COMMON[@]}" \
  --decoders "ar;cllm:n=$N;cllm:n=$N,lookahead=true;jacobi:n=$N"
step run-sft cllm-bench run --models "$WORK/sft" --output-path "$WORK/run-sft" "${COMMON[@]}" --decoders "ar"
step report cllm-bench report "$WORK/run-base" "$WORK/run-cllm" "$WORK/run-sft" --output "$RESULTS"

for r in base cllm sft; do cp "$WORK/run-$r/summary.json" "$RESULTS/summary-$r.json"; done
for m in traj cllm medusa draft sft; do
  [ -f "$WORK/$m/manifest.json" ] && cp "$WORK/$m/manifest.json" "$RESULTS/manifest-$m.json"
done
echo "finished $(date -u +%FT%TZ)" >> "$LOG"
