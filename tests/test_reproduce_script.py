"""scripts/reproduce_gsm8k.sh end to end on a tiny random model: every step runs, the
results folder holds what README's Results section promises (small files only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data/gsm8k")
def test_reproduce_gsm8k_script_runs_end_to_end(tiny_model_dir, tmp_path):
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        N_TRAIN="3", N_EVAL="2", MAX_NEW="6", N="4", CLLM_STEPS="2", DRAFT_LAYERS="1", CUDA_VISIBLE_DEVICES="",
        DATA=str(SHARED_DATA), WORK=str(tmp_path / "work"), RESULTS=str(tmp_path / "results"),
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_gsm8k.sh"), str(tiny_model_dir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    for name in ("commands.md", "report.md", "report.html", "summary-base.json", "summary-cllm.json",
                 "summary-sft.json", "manifest-traj.json", "manifest-cllm.json", "speedup.png"):  # fmt: skip
        assert (results / name).is_file(), name
    log = (results / "commands.md").read_text()
    for step in ("trajectories", "cllm", "medusa", "draft", "sft", "run-base", "run-cllm", "run-sft", "report"):
        assert f"| {step} |" in log
    assert "invocation: `N_TRAIN=3 N_EVAL=2 MAX_NEW=6" in log and "finished" in log
    base = json.loads((results / "summary-base.json").read_text())
    decoders = {row["decoder"].split(":")[0] for row in base["results"]}
    assert {"ar", "jacobi", "lookahead", "prompt_lookup", "speculative", "medusa", "hf"} <= decoders
    cllm_rows = json.loads((results / "summary-cllm.json").read_text())["results"]
    assert {row["decoder"] for row in cllm_rows} >= {"ar", "cllm:n=4", "cllm:n=4,lookahead=true", "jacobi:n=4"}
    assert all(row["match_ar"] == 1.0 for row in base["results"] + cllm_rows)  # float32: lossless decoders match
    assert max(p.stat().st_size for p in results.iterdir()) < 2_000_000  # small files only, no checkpoints


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data/gsm8k")
def test_budget_mode_plans_from_probed_throughput_and_runs(tiny_model_dir, tmp_path):
    """BUDGET_S: `train plan` probes this device, sizes the pipeline, and the four stages run
    with the planned sizes (CPU, tiny model: the plan logic, not a GPU timing)."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        BUDGET_S="120", MAX_TRAIN="6", MAX_EVAL="12", MAX_NEW="6", N="4", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
        DATA=str(SHARED_DATA), WORK=str(tmp_path / "work"), RESULTS=str(tmp_path / "results"),
    )  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_gsm8k.sh"), str(tiny_model_dir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    plan = json.loads((results / "plan.json").read_text())
    assert plan["n_train"] == 6 and plan["n_eval"] == 12 and plan["budget_s"] == 120  # both capped
    assert plan["predicted_s"]["total"] <= 120 and all(v > 0 for v in plan["rates"].values())
    log = (results / "commands.md").read_text()
    for step in ("plan", "trajectories", "cllm", "run", "report"):
        assert f"| {step} |" in log
    assert json.loads((results / "manifest-traj.json").read_text())["prompts"] == 6
    rows = json.loads((results / "summary.json").read_text())["results"]
    assert {r["decoder"] for r in rows} == {"ar", "jacobi:n=4"}, rows
    assert all(r["n_samples"] == plan["n_eval"] for r in rows), ([r["n_samples"] for r in rows], plan["n_eval"])


def test_plan_sizes_fit_the_budget():
    from cllm_bench.errors import UserError
    from cllm_bench.trainers.budget import Rates, plan_sizes

    rates = Rates(traj_s_per_prompt=0.5, train_s_per_update=0.25, eval_s_per_question=2.0, load_s=5.0)
    plan = plan_sizes(rates, 540, epochs=2, eval_share=0.25, safety=0.15, stages=4, min_eval=10)
    usable = 540 * 0.85 - 20
    assert plan.n_eval == int(usable * 0.25 // 2.0) and plan.n_train == int((usable - plan.n_eval * 2.0) // 1.0)
    assert plan.predicted_s["total"] <= 540 * 0.85
    capped = plan_sizes(rates, 540, epochs=2, max_eval=20)
    assert capped.n_eval == 20 and capped.n_train > plan.n_train  # the time left over trains more
    with pytest.raises(UserError, match="does not fit"):
        plan_sizes(rates, 30)
