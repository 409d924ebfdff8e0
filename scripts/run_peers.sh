#!/usr/bin/env bash
# Ours vs HF in one run on the embedded model (SmolLM2-135M-Instruct, CPU float32):
#   speculative:draft=self:layers=6,k=4   vs  hf:assistant=self:layers=6,k=4   (HF assisted generation)
#   prompt_lookup:ngram=2,k=10            vs  hf:prompt_lookup=10              (HF prompt lookup, its ngram 2)
# plus ar and plain hf (the one-token-per-forward references), on Spec-Bench with 2 questions
# per category (12 questions, 14 generations: the MT-bench ones have two turns), 3 timed
# repeats, same prompts for every decoder. Then the report, whose "Ours vs HF" section
# shows ours ÷ HF in tokens/s per pair (docs/report.md), and match_ar for every decoder.
#
# The self:layers=6 draft is the target's first 6 of 30 layers (shared weights, untrained),
# so acceptance is low: this compares the two implementations of each method on the same
# draft and prompts, not a good draft.
#
# Estimated time on this project's 2-core CPU with nothing else running: about 50 minutes.
# Per repeat: 14 generations x 128 tokens = 1792 tokens per decoder; ar and hf at ~18 tok/s
# ~100 s each + ~15 s of prefill (the summarization/RAG prompts are 1-2k tokens); the four
# drafting decoders at ~0.55-0.95x of ar on CPU (an untrained draft) ~150-210 s each: ~930 s
# per repeat, x 3 repeats, + model load and one short warm-up generation per decoder. (The
# rate of scripts/run_spec_bench.sh's estimate, ~11-13 s per decoder-generation.) Roughly
# twice that while another job shares the CPU — and then the timings are void: run it on an
# idle machine (the report flags BUSY cells).
# Interrupted? Rerun the same command: finished samples are kept.
#
#   DATA_DIR   folder holding spec_bench/question.jsonl (default ../shared/data)
#   OUT        run folder (default results/peers/smollm2-cpu)
#   MAX_NEW    tokens per turn (default 128)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${DATA_DIR:-../shared/data}"
OUT="${OUT:-results/peers/smollm2-cpu}"
MAX_NEW="${MAX_NEW:-128}"

cllm-bench run --models smollm2-135m \
    --decoders "ar;hf;speculative:draft=self:layers=6,k=4;hf:assistant=self:layers=6,k=4;prompt_lookup:ngram=2,k=10;hf:prompt_lookup=10" \
    --tasks spec_bench --task-args per_category=2 --limit 0 \
    --data-dir "$DATA_DIR" --max-new-tokens "$MAX_NEW" --repeats 3 --warmup 1 \
    --device cpu --dtype float32 --output-path "$OUT" "$@"
cllm-bench report "$OUT"
