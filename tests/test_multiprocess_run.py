"""Evaluation sharded over 2 CPU processes (accelerate launch) == one process, timing aside."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from cllm_bench.cli import main

TIMING = {"decode_s", "decode_s_repeats", "ttft_s", "ttft_s_repeats", "tokens_per_s", "tokens_per_s_min",
          "tokens_per_s_max", "speedup", "decode_s_total", "peak_memory_mb", "turn_decode_s", "turn_ttft_s",
          "timing_health"}  # fmt: skip


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate launcher not on PATH")
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    args = ["run", "--models", str(tiny_model_dir), "--decoders", "ar,jacobi:n=4", "--tasks", "humaneval",
            "--limit", "5", "--max-new-tokens", "10", "--device", "cpu", "--dtype", "float32", "--warmup", "0"]  # fmt: skip
    single = tmp_path / "single"
    assert main([*args, "--output-path", str(single)]) == 0
    multi = tmp_path / "multi"
    launcher = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "-m", "cllm_bench.cli"]
    proc = subprocess.run([*launcher, *args, "--output-path", str(multi)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(multi.glob("samples.rank*.jsonl"))  # merged away
    read = lambda p: [json.loads(x) for x in (p / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(multi)) == strip(read(single))
    s1 = json.loads((single / "summary.json").read_text())["results"]
    s2 = json.loads((multi / "summary.json").read_text())["results"]
    assert strip(s2) == strip(s1)
    assert json.loads((multi / "run_config.json").read_text())["finished"] is True
