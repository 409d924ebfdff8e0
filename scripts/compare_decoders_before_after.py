"""Run every registered decoder on the embedded model and write what must not change.

For refactors that must not change behaviour: run this on two commits and diff the JSON
files. It runs ``cllm-bench run`` (every decoder, 2 HumanEval prompts, 16 new tokens, one
repeat, no warm-up) and, for the decoders with a batched path, ``generate_batch`` on the
two prompts together; it writes each sample's tokens and record, each cell's summary,
and each batched row's tokens, minus everything that depends on the clock or the machine
(timings, speeds, memory, timing health, provenance).

    OMP_NUM_THREADS=1 python scripts/compare_decoders_before_after.py OUT.json
    diff <(python -m json.tool before.json) <(python -m json.tool after.json)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

#: every decoder, with parameters small enough for a CPU run (the heads and drafts are
#: random or cut from the target, so no download is needed)
DECODERS = [
    "ar",
    "jacobi:n=4",
    "cllm:n=4",
    "cllm:n=4,lookahead=true",
    "lookahead:w=3,n=3,g=3",
    "prompt_lookup",
    "speculative:draft=self:layers=4,k=3",
    "medusa:heads=random:3",
    "eagle:head=random,depth=3,total_tokens=10",
    "hf",
]
BATCH_DECODERS = ["ar", "jacobi:n=4", "cllm:n=4", "speculative:draft=self:layers=4,k=3", "hf"]
MAX_NEW_TOKENS = 16
LIMIT = 2

#: keys (at any depth) whose values depend on the clock, the machine or the run folder
VOLATILE = {"decode_s", "decode_s_repeats", "ttft_s", "ttft_s_repeats", "tokens_per_s", "speedup", "turn_decode_s",
            "turn_ttft_s", "timing_health", "peak_memory_gb", "peak_memory_bytes", "provenance", "tokens_per_s_ci",
            "speedup_ci", "wall_s", "memory_gb"}  # fmt: skip


def strip_volatile(value: Any) -> Any:
    """``value`` without :data:`VOLATILE` keys, nor any key naming a time, speed or memory."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE and not _timing_key(k)}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def _timing_key(key: str) -> bool:
    return (key.endswith(("_s", "_ms", "_seconds")) or "_per_s" in key or "_s_" in key or "memory" in key
            or "speedup" in key)  # fmt: skip


def run_matrix_part(out: Path) -> dict[str, Any]:
    """Every decoder through ``cllm-bench run``; per-sample records and per-cell summaries."""
    from rich.console import Console

    from cllm_bench.runner import RunConfig, run_matrix

    config = RunConfig(decoders=DECODERS, tasks=["humaneval"], limit=LIMIT, max_new_tokens=MAX_NEW_TOKENS,
                       repeats=1, warmup=0, dtype="float32", device="cpu", allow_code_execution=True,
                       output_path=str(out))  # fmt: skip
    folder = run_matrix(config, Console(quiet=True))
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    samples.sort(key=lambda r: (r["decoder"], r["sample_id"]))
    summary = json.loads((folder / "summary.json").read_text())
    return {"samples": strip_volatile(samples), "summary": strip_volatile(summary["results"])}


def batch_part() -> dict[str, Any]:
    """Batched decoders on the two prompts together: each row's tokens and step counts."""
    import torch

    from cllm_bench.api import BatchEngine, build_decoder
    from cllm_bench.models import DEFAULT_MODEL, load_model
    from cllm_bench.runner import RunConfig, build_task

    loaded = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    task = build_task("humaneval", RunConfig(allow_code_execution=True))
    prompts = [task.prompt_ids(s, loaded.tokenizer, []) for s in task.samples(LIMIT)]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    rows: dict[str, Any] = {}
    for spec in BATCH_DECODERS:
        decoder = build_decoder(spec)
        decoder.prepare(loaded)
        engine = BatchEngine(loaded.model, pad_id=pad)
        with torch.inference_mode():
            traces = decoder.generate_batch(engine, prompts, MAX_NEW_TOKENS, loaded.eos_ids)
        rows[decoder.label] = [{"tokens": t.tokens, "steps": [(s.kind, s.fed, s.accepted) for s in t.steps],
                                "stop_reason": t.stop_reason} for t in traces]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="JSON file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        doc = run_matrix_part(Path(tmp) / "run")
    doc["batch"] = batch_part()
    args.output.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}: {len(doc['samples'])} samples, {len(doc['summary'])} cells, "
          f"{len(doc['batch'])} batched decoders")  # fmt: skip


if __name__ == "__main__":
    main()
