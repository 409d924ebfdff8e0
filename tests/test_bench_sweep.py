"""`cllm-bench bench --batch-size 1,2,...`: one process, every batch size, ratio to batched ar."""

from __future__ import annotations

import json

import pytest

from cllm_bench.bench_sweep import parse_batch_sizes, sweep_summary
from cllm_bench.cli import main
from cllm_bench.errors import UserError


def rows(**tps: float) -> list[dict]:
    return [{"method": m, "tokens_per_s": v} for m, v in tps.items()]


def test_break_even_is_the_largest_batch_size_still_beating_ar():
    summary = sweep_summary({
        1: rows(ar=10.0, jacobi=15.0, spec=8.0),
        2: rows(ar=20.0, jacobi=24.0, spec=10.0),
        4: rows(ar=40.0, jacobi=36.0, spec=20.0),
    })  # fmt: skip
    assert summary["jacobi"]["ratio_vs_ar"] == pytest.approx([1.5, 1.2, 0.9])
    assert summary["jacobi"]["break_even_batch_size"] == 2
    assert summary["spec"]["break_even_batch_size"] is None  # never beats ar
    assert summary["ar"]["ratio_vs_ar"] == [1.0, 1.0, 1.0] and summary["ar"]["break_even_batch_size"] is None


def test_parse_batch_sizes():
    assert parse_batch_sizes("8,1, 2,2") == [1, 2, 8]
    for bad in ("0", "a,2", ""):
        with pytest.raises(UserError, match="--batch-size"):
            parse_batch_sizes(bad)


def test_sweep_in_one_process_writes_json_and_plot(tiny_model_dir, tmp_path, capsys):
    rc = main(["bench", "--model", str(tiny_model_dir), "--max-new-tokens", "5", "--repeats", "1", "--warmup", "0",
               "--device", "cpu", "--dtype", "float32", "--batch-size", "1,2", "--decoders", "jacobi:n=4",
               "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 0
    (path,) = tmp_path.glob("bench-sweep-*.json")
    doc = json.loads(path.read_text())
    assert doc["batch_sizes"] == [1, 2] and set(doc["runs"]) == {"1", "2"}
    assert [r["batch_size"] for r in doc["runs"]["2"]["results"]] == [2, 2, 2]
    assert set(doc["sweep"]) == {"hf eager", "ar", "jacobi:n=4"}
    jac = doc["sweep"]["jacobi:n=4"]
    for B, ratio in zip(jac["batch_sizes"], jac["ratio_vs_ar"]):
        by = {r["method"]: r for r in doc["runs"][str(B)]["results"]}
        assert ratio == pytest.approx(by["jacobi:n=4"]["tokens_per_s"] / by["ar"]["tokens_per_s"])
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "break-even" in capsys.readouterr().out


def test_sweep_refuses_unbatched_decoder_before_loading(tiny_model_dir, tmp_path, capsys):
    rc = main(["bench", "--model", str(tiny_model_dir), "--batch-size", "1,4", "--decoders", "lookahead",
               "--device", "cpu", "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "without a batched path" in capsys.readouterr().err
