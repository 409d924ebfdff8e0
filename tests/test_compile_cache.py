"""The persistent compile cache, ``bench``'s engine facts and its regression guard.

Nothing here is timed: the guard is a pure function of rows and a health summary, and the
compiled bench on a tiny model checks tokens and the cache's bookkeeping only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cllm_bench.bench import engine_line, regression_guard
from cllm_bench.cli import main
from cllm_bench.compile_cache import (
    INDUCTOR_ENV,
    cached_entries,
    default_compile_cache_dir,
    describe_compile_cache,
    persistent_compile_cache,
)


def test_persistent_cache_sets_and_restores_inductor_dir(tmp_path: Path):
    env: dict[str, str] = {}
    with persistent_compile_cache(env, root=tmp_path) as directory:
        assert directory == tmp_path / "compile" / "inductor"
        assert env[INDUCTOR_ENV] == str(directory)
        info = describe_compile_cache(env, root=tmp_path)
        assert info.source == "cllm-bench" and info.entries_before == 0 and not info.as_dict()["warm"]
    assert INDUCTOR_ENV not in env  # restored: it was unset
    assert not directory.exists()  # nothing is created until inductor writes


def test_user_inductor_dir_wins(tmp_path: Path):
    env = {INDUCTOR_ENV: str(tmp_path / "mine")}
    with persistent_compile_cache(env, root=tmp_path) as directory:
        assert directory == tmp_path / "mine"
        assert describe_compile_cache(env, root=tmp_path).source == INDUCTOR_ENV
    assert env[INDUCTOR_ENV] == str(tmp_path / "mine")  # left as the user set it


def test_cached_entries_counts_graphs_and_kernels_not_locks(tmp_path: Path):
    assert cached_entries(tmp_path) == 0
    (tmp_path / "fxgraph" / "ab").mkdir(parents=True)
    (tmp_path / "fxgraph" / "ab" / "entry1").write_bytes(b"x")
    (tmp_path / "c6").mkdir()
    (tmp_path / "c6" / "kernel.so").write_bytes(b"y")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "k.lock").write_bytes(b"")
    assert cached_entries(tmp_path) == 2
    env = {INDUCTOR_ENV: str(tmp_path)}
    assert describe_compile_cache(env).as_dict() == {"dir": str(tmp_path), "source": INDUCTOR_ENV,
                                                     "entries_before": 2, "warm": True}  # fmt: skip


def _rows(ar_tps: float, ar_range: tuple[float, float], hf_tps: float, hf_range: tuple[float, float]) -> list[dict]:
    return [
        {"method": "hf eager", "tokens_per_s": hf_tps, "tokens_per_s_min": hf_range[0], "tokens_per_s_max": hf_range[1],
         "ratio_vs_hf_eager": 1.0},
        {"method": "ar", "tokens_per_s": ar_tps, "tokens_per_s_min": ar_range[0], "tokens_per_s_max": ar_range[1],
         "ratio_vs_hf_eager": ar_tps / hf_tps},
    ]  # fmt: skip


QUIET = {"ok": True, "problems": []}


def test_guard_silent_at_or_above_hf_eager_and_off_cpu():
    assert regression_guard(_rows(32.0, (31, 33), 32.0, (31, 33)), "cpu", QUIET) is None
    assert regression_guard(_rows(20.0, (19, 21), 32.0, (31, 33)), "cuda", QUIET) is None
    assert regression_guard(_rows(20.0, (19, 21), 32.0, (31, 33))[:1], "cpu", QUIET) is None  # no ar row


def test_guard_says_why_ar_is_below_hf_eager():
    regressed = regression_guard(_rows(20.0, (19.5, 20.5), 32.0, (31, 33)), "cpu", QUIET)
    assert regressed is not None and regressed["flag"] == "ar_below_hf_eager"
    assert regressed["ratio"] == pytest.approx(0.625) and "regressed" in regressed["why"] and "drift" in regressed["why"]
    noisy = regression_guard(_rows(31.5, (30, 32.5), 32.0, (31, 33)), "cpu", QUIET)
    assert noisy is not None and "noise" in noisy["why"]
    busy = regression_guard(_rows(20.0, (19.5, 20.5), 32.0, (31, 33)), "cpu",
                            {"ok": False, "problems": ["other processes used 1.9 cores"]})  # fmt: skip
    assert busy is not None and "busy" in busy["why"] and "1.9 cores" in busy["why"]


def test_engine_line_says_eager_or_compiled_and_cache_state():
    assert engine_line({"engine": "dynamic", "compile": False}) == "our decoders ran on the dynamic engine, eager"
    line = engine_line({"engine": "static", "compile": True,
                        "compile_cache": {"dir": "/c", "source": "cllm-bench", "entries_before": 0, "warm": False}})  # fmt: skip
    assert "compiled" in line and "cold" in line


def test_compiled_bench_on_cpu_uses_the_persistent_cache(tiny_model_dir, tmp_path, monkeypatch):
    """--compile on (inductor on CPU): same tokens as HF eager, rows say compiled, and the
    compiled kernels land in the cllm-bench cache; a second process finds them (entries_before)."""
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.setenv("CLLM_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--repeats", "1", "--warmup", "1",
               "--num-prompts", "1", "--compile", "on", "--output-path", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(next(out.glob("bench-*.json")).read_text())
    prov, rows = doc["provenance"], {r["method"]: r for r in doc["results"]}
    assert prov["compile"] is True and prov["compile_cache"]["source"] == "cllm-bench"
    assert prov["compile_cache"]["dir"] == str(default_compile_cache_dir(tmp_path / "cache"))
    assert rows["ar"]["compiled"] is True and rows["ar"]["engine"] == "static+compile"
    assert rows["hf eager"]["compiled"] is False and rows["hf eager"]["engine"] == "hf dynamic eager"
    assert rows["ar"]["match_hf_eager"]
    assert cached_entries(default_compile_cache_dir(tmp_path / "cache")) > 0
    assert "regression_guard" in prov


def test_bench_capacity_is_tight_for_ar_and_roomy_for_block_decoders():
    """A static cache's attention reads every position: ar's is prompt + budget + 1, not + 512."""
    from cllm_bench.bench import BenchConfig, bench_capacity
    from cllm_bench.decoders.base import build_decoder

    prompts = [[1] * 51, [1] * 45]
    cfg = BenchConfig(max_new_tokens=128)
    assert bench_capacity(prompts, cfg, build_decoder("ar").cache_headroom) == 51 + 128 + 1
    assert bench_capacity(prompts, cfg, build_decoder("jacobi:n=16").cache_headroom) == 51 + 128 + 512
    assert bench_capacity(prompts, BenchConfig(max_new_tokens=128, batch_size=4), 1) == 2 * (51 + 128) + 1
