#!/usr/bin/env python
"""Write synthetic run folders in the runner's format and (optionally) report on them.

Used by tests/test_report.py and to render docs/report-screenshot-synthetic.png. The numbers are
SYNTHETIC (seeded random draws shaped like a small-model GPU run), never a measurement;
the provenance says so (``"synthetic": true``), and the report then carries
"SYNTHETIC — not a measurement" in its title and on every plot.

    python scripts/make_report_fixture.py --out /tmp/report-fixture   # writes run_a, run_b, report/
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

MODELS = ("smollm2-135m", "qwen2.5-0.5b")
TASKS = ("gsm8k", "humaneval")
DECODERS = ("ar", "jacobi:n=8", "jacobi:n=16", "cllm", "lookahead:w=5,n=7,g=7")
N_SAMPLES = {
    ("smollm2-135m", "gsm8k"): 20,
    ("smollm2-135m", "humaneval"): 12,
    ("qwen2.5-0.5b", "gsm8k"): 16,
    ("qwen2.5-0.5b", "humaneval"): 8,
}
FORWARD_COST = {"smollm2-135m": 0.0031, "qwen2.5-0.5b": 0.0046}  # seconds per ar forward
WIDTH_COST = {"ar": 1.0, "jacobi:n=8": 1.04, "jacobi:n=16": 1.08, "cllm": 1.08, "lookahead:w=5,n=7,g=7": 1.3}
# cllm runs a different checkpoint than the base model whose ar it is compared with here, so it is not
# expected to match that ar (the registry marks cllm lossless w.r.t. ar of the *same* CLLM checkpoint).
LOSSLESS = {"ar": True, "jacobi:n=8": True, "jacobi:n=16": True, "cllm": False, "lookahead:w=5,n=7,g=7": True}


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` as ``parts`` positive integers (parts <= total)."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def _jacobi_blocks(length: int, n: int, trained: bool, rng: random.Random) -> dict[str, Any]:
    """Per-block iterations/FF/stationary and accepted tokens per forward for one request."""
    accepted, iters, ff, stat = [1], [], [], []
    remaining = length - 1
    while remaining > 0:
        e = min(n, remaining)
        if trained:
            k = max(1, min(e, round(e / rng.uniform(2.4, 3.6))))
        else:
            k = max(1, e - rng.choice([0, 0, 1, 1, 2, 3]) * max(1, e // 8))
        parts = _split(e, k, rng)
        accepted += parts
        iters.append(k)
        ff.append(e / k)
        stat.append(min(e, rng.randint(1, 5) if trained else rng.choice([0, 0, 0, 1, 1, 2])))
        remaining -= e
    return {"accepted": accepted, "block_iterations": iters, "block_ff": ff, "block_stationary": stat}


def _lookahead_accepted(length: int, rng: random.Random) -> list[int]:
    accepted = [1]
    while sum(accepted) < length:
        a = rng.choices([1, 2, 3, 4, 5, 6], weights=[50, 22, 12, 8, 5, 3])[0]
        accepted.append(min(a, length - sum(accepted)))
    return accepted


def _score(task: str, correct: bool) -> dict[str, Any]:
    if task == "gsm8k":
        return {"exact_match_strict": correct, "exact_match_flexible": correct}
    return {"passed": correct}


def make_samples(seed: int, regress: bool) -> list[dict[str, Any]]:
    """All per-sample objects of a run (deterministic for ``seed``)."""
    samples = []
    for model in MODELS:
        for task in TASKS:
            rng = random.Random(f"{seed}-{model}-{task}")
            n = N_SAMPLES[(model, task)]
            lengths = [rng.randint(70, 256) if task == "gsm8k" else rng.randint(50, 200) for _ in range(n)]
            base_p = (0.35 if model == "smollm2-135m" else 0.55) * (1.0 if task == "gsm8k" else 0.6)
            ar_correct = [rng.random() < base_p for _ in range(n)]
            for decoder in DECODERS:
                drng = random.Random(f"{seed}-{model}-{task}-{decoder}")
                for i, length in enumerate(lengths):
                    family = decoder.split(":")[0]
                    jn = 8 if decoder == "jacobi:n=8" else 16 if family in ("jacobi", "cllm") else None
                    blocks: dict[str, Any] = {}
                    if family == "ar":
                        accepted = [1] * length
                    elif family == "lookahead":
                        accepted = _lookahead_accepted(length, drng)
                    else:
                        blocks = _jacobi_blocks(length, jn or 16, family == "cllm", drng)
                        accepted = blocks["accepted"]
                    cost = FORWARD_COST[model] * WIDTH_COST[decoder]
                    if regress and model == "smollm2-135m" and task == "gsm8k" and family == "lookahead":
                        cost *= 1.45  # planted tokens/s regression
                    decode_s = len(accepted) * cost * drng.uniform(0.97, 1.03)
                    match = True
                    if family == "cllm":
                        match = drng.random() < 0.3
                    if decoder == "jacobi:n=16" and model == "qwen2.5-0.5b" and task == "humaneval" and i == 3:
                        match = False  # planted losslessness failure
                    correct = ar_correct[i] if match else drng.random() < base_p * 1.1
                    if regress and model == "smollm2-135m" and task == "gsm8k" and family == "cllm" and i % 2 == 0:
                        correct = False  # planted accuracy regression
                    sample: dict[str, Any] = {
                        "model": model,
                        "decoder": decoder,
                        "task": task,
                        "sample_id": f"{task}-{i}",
                        "generated_tokens": length,
                        "forwards": len(accepted),
                        "accepted_per_step": accepted,
                        "fast_forwarded": statistics.fmean(blocks["block_ff"]) if blocks else None,
                        "stationary": sum(blocks["block_stationary"]) if blocks else None,
                        "block_ff": blocks.get("block_ff"),
                        "block_stationary": blocks.get("block_stationary"),
                        "block_iterations": blocks.get("block_iterations"),
                        "jacobi_n": jn,
                        "decode_s": decode_s,
                        "ttft_s": FORWARD_COST[model] * 3.2 * drng.uniform(0.95, 1.05),
                        "tokens_per_s": length / decode_s,
                        "match_ar": match,
                        "score": _score(task, correct),
                    }
                    samples.append(sample)
    return samples


def _correct(sample: dict[str, Any]) -> bool:
    score = sample["score"]
    return bool(score.get("exact_match_strict", score.get("passed")))


def aggregate(samples: list[dict[str, Any]], repeats: int, jitter_seed: int) -> list[dict[str, Any]]:
    """Summary records computed from the samples, as the runner would."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["model"], s["decoder"], s["task"]), []).append(s)
    records = []
    for (model, decoder, task), group in groups.items():
        rng = random.Random(f"{jitter_seed}-{model}-{decoder}-{task}")
        tokens = sum(s["generated_tokens"] for s in group)
        seconds = sum(s["decode_s"] for s in group)
        per_repeat = sorted(tokens / (seconds * rng.uniform(0.985, 1.03)) for _ in range(repeats))
        family = decoder.split(":")[0]
        jac = family in ("jacobi", "cllm")
        blocks_stat = [b for s in group for b in (s["block_stationary"] or [])]
        iters = sum(sum(s["block_iterations"] or []) for s in group)
        correct = [_correct(s) for s in group]
        if task == "gsm8k":
            task_metrics = {
                "exact_match_strict": statistics.fmean(correct),
                "exact_match_flexible": statistics.fmean(correct),
            }
        else:
            task_metrics = {"pass@1": statistics.fmean(correct)}
        records.append(
            {
                "model": model,
                "decoder": decoder,
                "task": task,
                "n_samples": len(group),
                "accuracy": statistics.fmean(correct),
                "task_metrics": task_metrics,
                "tokens_per_s": statistics.median(per_repeat),
                "tokens_per_s_min": per_repeat[0],
                "tokens_per_s_max": per_repeat[-1],
                "speedup": None,
                "tokens_per_forward": tokens / sum(s["forwards"] for s in group),
                "fast_forwarded": statistics.fmean(s["fast_forwarded"] for s in group) if jac else None,
                "stationary": statistics.fmean(s["stationary"] for s in group) if jac else None,
                "stationary_per_block": statistics.fmean(blocks_stat) if jac and blocks_stat else None,
                "tokens_per_iteration": tokens / iters if jac and iters else None,
                "match_ar": statistics.fmean(1.0 if s["match_ar"] else 0.0 for s in group),
                "first_divergence_mean": None if all(s["match_ar"] for s in group) else 37.5,
                "ttft_s": statistics.median(s["ttft_s"] for s in group),
                "decode_s_total": seconds,
                "generated_tokens": tokens,
                "peak_memory_mb": 1180.0 if model == "smollm2-135m" else 2310.0,
                "repeats": repeats,
                "lossless": LOSSLESS[decoder],
                "skipped": {"prompt_too_long": 1} if (model, task, family) == ("qwen2.5-0.5b", "gsm8k", "lookahead") else {},
            }
        )
    ar = {(r["model"], r["task"]): r["tokens_per_s"] for r in records if r["decoder"] == "ar"}
    for r in records:
        r["speedup"] = r["tokens_per_s"] / ar[(r["model"], r["task"])]
    return records


def provenance(name: str, repeats: int) -> dict[str, Any]:
    """Provenance of a fixture run; ``synthetic: true`` makes the report stamp every title and plot."""
    return {
        "synthetic": True,
        "cllm_bench_version": "0.1.0",
        "git_commit": "0000000 (synthetic fixture)",
        "command": f"python scripts/make_report_fixture.py  # {name}: SYNTHETIC data, not a measurement",
        "argv": ["scripts/make_report_fixture.py"],
        "start_time": "2025-01-01T00:00:00Z",
        "end_time": "2025-01-01T00:42:00Z",
        "device": "cuda",
        "device_name": "synthetic fixture (no device)",
        "dtype": "bfloat16",
        "seed": 0,
        "packages": {"torch": "2.13.0", "transformers": "5.2.0"},
        "repeats": repeats,
        "warmup": 1,
        "max_new_tokens": 256,
        "limit": 20,
        "complete": True,
    }


def write_fixture_run(
    run_dir: Path, *, seed: int = 0, regress: bool = False, repeats: int = 3, jitter_seed: int = 0
) -> Path:
    """Write RUN_DIR/summary.json and samples.jsonl; return ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    samples = make_samples(seed, regress)
    summary = {"provenance": provenance(run_dir.name, repeats), "results": aggregate(samples, repeats, jitter_seed)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with (run_dir / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for s in samples:
            handle.write(json.dumps(s) + "\n")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cllm-report-fixture"))
    parser.add_argument("--no-report", action="store_true", help="only write the run folders")
    parser.add_argument("--single", action="store_true", help="report on run_a alone (no run comparison)")
    args = parser.parse_args()
    run_a = write_fixture_run(args.out / "run_a")
    run_b = write_fixture_run(args.out / "run_b", regress=True, jitter_seed=1)
    if not args.no_report:
        from rich.console import Console

        from cllm_bench.report import run_report

        runs = [run_a] if args.single else [run_a, run_b]
        out = run_report(runs, args.out / "report", ["md", "html", "csv"], Console())
        print(out / "report.html")


if __name__ == "__main__":
    main()
