"""MT-bench judging through the runner, and opt-in model aliases."""

from __future__ import annotations

import json

import pytest

from cllm_bench.errors import UserError
from cllm_bench.models import resolve_source
from cllm_bench.runner import RunConfig, run_matrix
from conftest import SHARED_DATA


def test_installable_alias_not_installed_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("CLLM_BENCH_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="cllm-bench models install qwen2.5-coder-0.5b"):
        resolve_source("qwen2.5-coder-0.5b")


@pytest.mark.skipif(not (SHARED_DATA / "mt_bench").is_dir(), reason="../shared/data/mt_bench not present")
def test_mt_bench_with_judge_records_ratings(tiny_model_dir, tmp_path):
    from rich.console import Console

    config = RunConfig(models=[str(tiny_model_dir)], decoders=["ar", "jacobi:n=4"], tasks=["mt_bench"], limit=2,
                       max_new_tokens=6, device="cpu", dtype="float32", data_dir=str(SHARED_DATA),
                       judge=str(tiny_model_dir), judge_max_new_tokens=8, output_path=str(tmp_path / "run"))  # fmt: skip
    out = run_matrix(config, Console(quiet=True))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    for rec in samples:
        assert rec["score"]["judged"] is True
        assert len(rec["score"]["judgments"]) == 2  # one judgment per turn
        assert len(rec["turn_lengths"]) == 2
    jac = [r for r in samples if r["decoder"] == "jacobi:n=4"]
    assert all(r["match_ar"] for r in jac)  # second turn follows ar's first answer: same conversation
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["results"][0]["task_metrics"]
    assert metrics["accuracy"] is None and "judge_failures" in metrics
