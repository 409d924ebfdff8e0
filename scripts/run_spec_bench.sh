#!/usr/bin/env bash
# Spec-Bench on the embedded model (SmolLM2-135M-Instruct, CPU float32): every decoder on
# 5 questions per Spec-Bench category (30 questions: 5 two-turn MT-bench ones spanning five
# of its categories, 5 each of translation, summarization, qa, math_reasoning, rag), then
# the report (per-category speedups, acceptance, Spec-Bench leaderboard side by side) and
# the run in Spec-Bench's answer format.
#
# Estimated time on this project's 2-core CPU with nothing else running: about 1 hour
# (35 generations x 128 tokens per decoder, 8 decoders; ar ~18 tok/s, the drafting
# decoders 0.55-0.95x of it on CPU; summarization/RAG prompts are 1-2k tokens, so each
# prefill costs a few seconds). Roughly twice that while another job shares the CPU.
# Interrupted? Rerun the same command: finished samples are kept.
#
#   DATA_DIR   folder holding spec_bench/question.jsonl (default ../shared/data)
#   OUT        run folder (default results/spec-bench-smollm2-cpu)
#   MAX_NEW    tokens per turn (default 128; Spec-Bench itself uses 1024 on GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${DATA_DIR:-../shared/data}"
OUT="${OUT:-results/spec-bench-smollm2-cpu}"
MAX_NEW="${MAX_NEW:-128}"

cllm-bench run --models smollm2-135m \
    --decoders "ar;jacobi:n=16;cllm:n=16,lookahead=true;lookahead;speculative;medusa;prompt_lookup;hf" \
    --tasks spec_bench --task-args per_category=5 --limit 0 \
    --data-dir "$DATA_DIR" --max-new-tokens "$MAX_NEW" --repeats 1 --warmup 1 \
    --device cpu --dtype float32 --output-path "$OUT" "$@"
cllm-bench report "$OUT"
cllm-bench export --format spec-bench "$OUT"
