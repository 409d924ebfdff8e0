#!/usr/bin/env bash
# Base model vs the CLLM of scripts/cllm_spider_cpu.sh on Spider *dev* questions (never trained
# on), in ONE run so every speedup is a ratio to its own model's `ar` from the same process:
#   ar, jacobi:n=4, jacobi:n=8, jacobi:n=16 on both models; execution accuracy (sandboxed SQL);
#   then the report with the training's learning curves.
# Sizes (environment): N_EVAL dev questions (20), MAX_NEW (48), REPEATS (2), THREADS (2: the
# machine must be otherwise idle; the run records its timing health).
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/cllm-spider}
RESULTS=${RESULTS:-results/cllm-spider}
N_EVAL=${N_EVAL:-20}; MAX_NEW=${MAX_NEW:-48}; REPEATS=${REPEATS:-2}
export OMP_NUM_THREADS=${THREADS:-2}
LOG="$RESULTS/commands.md"
t0=$SECONDS
CMD=(cllm-bench run --models "$MODEL,$WORK/cllm" --tasks spider --task-args split=dev --data-dir "$DATA"
     --limit "$N_EVAL" --max-new-tokens "$MAX_NEW" --repeats "$REPEATS" --warmup 1 --allow-code-execution
     --decoders "ar;jacobi:n=4;jacobi:n=8;jacobi:n=16" --output-path "$WORK/run")
"${CMD[@]}"
echo "| run | \`${CMD[*]}\` (OMP_NUM_THREADS=$OMP_NUM_THREADS) | $((SECONDS - t0)) |" >> "$LOG"
cllm-bench report "$WORK/run" --curves "$WORK/cllm/manifest.json" --output "$RESULTS"
echo "| report | \`cllm-bench report $WORK/run --curves $WORK/cllm/manifest.json --output $RESULTS\` | |" >> "$LOG"
cp "$WORK/run/summary.json" "$RESULTS/summary.json"
echo "finished evaluation $(date -u +%FT%TZ)" >> "$LOG"
