"""`cllm-bench run` on every task with --limit 3 on a tiny random model (real data from ../shared/data)."""

from __future__ import annotations

import json

import pytest

from cllm_bench.cli import main
from conftest import SHARED_DATA

NEEDS_DATA = {"gsm8k": "gsm8k", "spider": "spider", "mt_bench": "mt_bench", "humaneval": None}


@pytest.mark.parametrize("task", sorted(NEEDS_DATA))
def test_cli_run_each_task(task, tiny_model_dir, tmp_path):
    sub = NEEDS_DATA[task]
    if sub and not (SHARED_DATA / sub).is_dir():
        pytest.skip(f"../shared/data/{sub} not present")
    out = tmp_path / task
    args = ["run", "--models", str(tiny_model_dir), "--decoders", "ar,jacobi:n=4", "--tasks", task, "--limit", "3",
            "--max-new-tokens", "8", "--device", "cpu", "--dtype", "float32", "--data-dir", str(SHARED_DATA),
            "--allow-code-execution", "--output-path", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["n_samples"] for r in summary["results"]] == [3, 3]
    assert all(r["match_ar"] == 1.0 for r in summary["results"])
    if task == "spider":
        assert summary["results"][0]["skipped"] == {"missing_database:wta_1": 62}
    if task != "mt_bench":  # a random model answers wrong, but the scorer ran
        assert summary["results"][0]["accuracy"] == 0.0


def test_missing_data_dir_names_the_file(tiny_model_dir, tmp_path, capsys):
    args = ["run", "--models", str(tiny_model_dir), "--tasks", "gsm8k", "--data-dir", str(tmp_path / "nowhere"),
            "--device", "cpu", "--output-path", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "gsm8k" in err and "test.jsonl" in err and "Traceback" not in err
