#!/usr/bin/env bash
# Validate `cllm-bench predict` on this machine (issue 22): predict this device's own speedups
# from its own cost table for every decoder of one run on the embedded model, and compare
# them with the speedups measured in the same run. Pass: |error| <= 10% of the measured
# speedup for every decoder (error = (predicted - measured) / measured).
#
# Needs an IDLE machine: every number here is a timing (nothing else running; the run's
# timing_health section says whether the machine stayed quiet).
# Estimated wall time on the 2-core CPU machine (SmolLM2-135M fp32, ~45 ms per 1-token
# forward, ~4x that at 64 tokens): run ~12-15 min (6 decoders x 5 prompts x 64 tokens x
# 3 repeats + 1 warm-up each; Medusa's 64-token tree forwards are the slowest cell, ~4 min),
# profile ~5 min (every width the run's forwards used, ~16 chain + ~13 tree + ~8 draft widths,
# x 3 contexts, 17 forwards per point, the ar overhead loop), predict seconds: ~20 min in all.
#
# The profile measures exactly the widths the run used (--widths-from): on this CPU the cost
# of a forward is not smooth in its width (2 rows cost more than 8), so a table of powers of
# two interpolated in between mispriced prompt lookup by +34% and Jacobi by +20%; with the
# run's widths, interleaved, every decoder came within 6% (2026-11-29; docs/predict.md,
# "Validation"; results/validate-predict-cpu/).
#
#   bash scripts/validate_predict.sh [OUT_DIR]     # default results/validate-predict-cpu
set -euo pipefail

OUT=${1:-results/validate-predict-cpu}
MODEL=${MODEL:-smollm2-135m}
DRAFT=self:layers=4
# every decoder that needs no trained artefact (cllm and eagle do), except `hf`: its loop is
# transformers' generate(), whose host overhead is not the one the cost table measures (ours)
DECODERS="ar;jacobi:n=16;lookahead;prompt_lookup;speculative:draft=$DRAFT,k=4;medusa:heads=random:4"

mkdir -p "$OUT"
# 1. the run: 5 HumanEval prompts, 64 new tokens
cllm-bench run --models "$MODEL" --decoders "$DECODERS" --tasks humaneval --limit 5 \
  --max-new-tokens 64 --repeats 3 --warmup 1 --device cpu --dtype float32 --output-path "$OUT/run"

# 2. this device's cost table, contexts up to the longest forward of that run
cllm-bench profile --models "$MODEL" --draft "$DRAFT" --heads random:4 --widths-from "$OUT/run" \
  --contexts-from "$OUT/run" --repeats 3 --calls 5 --device cpu --dtype float32 --output "$OUT/cost-table.json"

# 3. predict the run on its own device (no model loaded) and compare per decoder
cllm-bench predict "$OUT/run" --cost-table "$OUT/cost-table.json" --output "$OUT/prediction.json"
python3 - "$OUT/prediction.json" <<'EOF'
import json, sys
pred = json.load(open(sys.argv[1]))
assert pred["same_device"], "the cost table is not of the run's device"
worst, failed = None, []
for c in pred["cells"]:
    err = c["speedup_error"]
    line = (f"{c['decoder']:45s} measured {c['measured_speedup']!s:>8.8} predicted {c['predicted_speedup']!s:>8.8} "
            f"error {'n/a' if err is None else f'{err:+.1%}'} {c['note']}")
    print(line)
    if err is None or abs(err) > 0.10:
        failed.append(c["decoder"])
    if err is not None and (worst is None or abs(err) > abs(worst[1])):
        worst = (c["decoder"], err)
print(f"worst: {worst[0]} {worst[1]:+.1%}" if worst else "no decoder predicted")
sys.exit(1 if failed else 0)
EOF
cllm-bench report "$OUT/run" --cost-table "$OUT/cost-table.json" --format md
