#!/usr/bin/env bash
# The compiled CPU path and its persistent compile cache, measured with `cllm-bench bench`:
#   process 1: --compile on with an EMPTY compile cache (pays the full compile: HF static+compile and our ar)
#   process 2: the same command in a new process (finds the graphs and kernels process 1 built)
#   process 3: --compile off (our eager ar against HF eager, the default path)
# Each JSON gives ratio_vs_hf_eager (and ratio_vs_hf_compiled) within its own run, the warm-up
# seconds per method (warmup_compile_s: compile + one untimed pass) and the cache state
# (provenance.compile_cache.graphs_before: 0 = cold).
#
# Usage: scripts/measure_compile_cache.sh [OUT]   (default results/bench)
# Environment: MODEL (smollm2-135m), MAX_NEW (128), REPEATS (3), CACHE (a fresh folder for
# CLLM_BENCH_CACHE; default: a new temporary one, so process 1 is really cold).
# Run it on an idle machine: every figure is a timing. ~15 min on the project's 2-core CPU.
set -euo pipefail
OUT=${1:-results/bench}
MODEL=${MODEL:-smollm2-135m}
MAX_NEW=${MAX_NEW:-128}
REPEATS=${REPEATS:-3}
CACHE=${CACHE:-$(mktemp -d)/cllm-bench-cache}
unset TORCHINDUCTOR_CACHE_DIR  # the compile cache under test is cllm-bench's own
export CLLM_BENCH_CACHE=$CACHE
mkdir -p "$OUT"
TMP=$(mktemp -d)
LOG="$OUT/cpu-compile-commands.md"
{
  echo "# Compiled CPU path: commands (scripts/measure_compile_cache.sh)"
  echo
  echo "CLLM_BENCH_CACHE=$CACHE (empty before process 1); started $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD)"
  echo
  echo "| file | command | process wall time (s) |"
  echo "| --- | --- | ---: |"
} > "$LOG"

bench() {  # bench NAME ARGS... : one bench process, its JSON renamed to NAME.json
  local name=$1; shift
  local t0=$SECONDS
  cllm-bench bench --model "$MODEL" --max-new-tokens "$MAX_NEW" --repeats "$REPEATS" --num-prompts 2 \
    --output-path "$TMP/$name" "$@"
  mv "$TMP/$name"/bench-*.json "$OUT/$name.json"
  echo "| $name.json | \`cllm-bench bench --model $MODEL --max-new-tokens $MAX_NEW --repeats $REPEATS --num-prompts 2 $*\` | $((SECONDS - t0)) |" >> "$LOG"
}

bench cpu-smollm2-fp32-compile-process1 --compile on --hf-compiled on
bench cpu-smollm2-fp32-compile-process2 --compile on --hf-compiled on
bench cpu-smollm2-fp32-eager-guard --compile off --hf-compiled off
echo "finished $(date -u +%FT%TZ)" >> "$LOG"
