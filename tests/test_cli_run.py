"""`cllm-bench run` end to end on a tiny random model: files, keys, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cllm_bench import runner
from cllm_bench.cli import main, split_decoder_list
from cllm_bench.records import SUMMARY_KEYS

SAMPLE_KEYS = {
    "model", "decoder", "task", "sample_id", "prompt_hash", "output_text", "output_ids", "generated_tokens",
    "forwards", "accepted_per_step", "fast_forwarded", "stationary", "decode_s", "ttft_s", "score", "match_ar",
}  # fmt: skip
TIMING = ("tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "speedup", "ttft_s", "decode_s_total", "peak_memory_mb",
          "timing_health")


def run_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--models", str(model_dir), "--decoders", "ar,jacobi:n=4", "--tasks", "humaneval",
        "--limit", "3", "--max-new-tokens", "12", "--warmup", "1", "--device", "cpu", "--dtype", "float32",
        "--output-path", str(out), *extra,
    ]  # fmt: skip


def load(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, samples


def untimed(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in results]


def test_run_writes_documented_files(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, out, "--repeats", "2")) == 0
    summary, samples = load(out)
    assert len(samples) == 6  # 2 decoders x 3 samples
    for rec in samples:
        assert SAMPLE_KEYS <= set(rec)
        assert rec["match_ar"] is True  # float32 tiny model: jacobi reproduces ar
        assert len(rec["decode_s_repeats"]) == 2
    assert {r["decoder"] for r in summary["results"]} == {"ar", "jacobi:n=4"}
    for rec in summary["results"]:
        assert set(SUMMARY_KEYS) <= set(rec)
        assert rec["n_samples"] == 3
        assert rec["accuracy"] is None  # code execution not enabled
    ar, jac = summary["results"]
    assert ar["speedup"] == 1.0 and ar["tokens_per_forward"] == 1.0
    assert jac["speedup"] == pytest.approx(jac["tokens_per_s"] / ar["tokens_per_s"])
    assert jac["fast_forwarded"] is not None and jac["stationary"] is not None
    prov = summary["provenance"]
    for key in ("packages", "git_commit", "device_name", "dtype", "seed", "command", "start_time", "end_time"):
        assert key in prov
    assert prov["complete"] is True


def test_resume_after_interrupt_and_partial_line(tiny_model_dir, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    assert main(run_args(tiny_model_dir, ref)) == 0
    out = tmp_path / "crashy"
    calls = {"n": 0}
    real = runner.timed_generate

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after ar's 3 samples and one jacobi sample
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "timed_generate", crashing)
    assert main(run_args(tiny_model_dir, out)) == 130
    monkeypatch.setattr(runner, "timed_generate", real)
    with open(out / "samples.jsonl", "a") as fh:
        fh.write('{"model": "half a line')  # a crash in the middle of a write
    before = (out / "samples.jsonl").read_text().splitlines()[:4]
    assert main(run_args(tiny_model_dir, out)) == 0
    summary, samples = load(out)
    keys = [(s["decoder"], s["sample_id"]) for s in samples]
    assert len(keys) == len(set(keys)) == 6
    assert (out / "samples.jsonl").read_text().splitlines()[:4] == before  # finished samples untouched
    ref_summary, ref_samples = load(ref)
    assert untimed(summary["results"]) == untimed(ref_summary["results"])
    assert sorted(s["output_ids"] for s in samples) == sorted(s["output_ids"] for s in ref_samples)


def test_resume_after_sigkill(tiny_model_dir, tmp_path):
    """A real process killed mid-run, then the same command: no duplicates, all samples."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cllm_bench.cli", *run_args(tiny_model_dir, out)]
    cmd[cmd.index("--limit") + 1] = "6"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(samples.read_text().splitlines())
    assert 4 <= n_before < 12
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    _, recs = load(out)
    keys = [(s["decoder"], s["sample_id"]) for s in recs]
    assert len(keys) == len(set(keys)) == 12


def test_default_output_dir_resumes_unfinished_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run_args(tiny_model_dir, tmp_path)[:-2]  # drop --output-path
    cfg = runner.RunConfig(models=[str(tiny_model_dir)], decoders=["ar"], tasks=["humaneval"])
    unfinished = tmp_path / "results" / "old-run"
    runner.claim_output_dir(unfinished, cfg)
    assert runner.resolve_output_dir(cfg, tmp_path / "results") == unfinished
    assert main(args) == 0
    runs = sorted((tmp_path / "results").glob("*/summary.json"))
    assert len(runs) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoders", "jacobbi"], "unknown decoder 'jacobbi'"),
        (["--decoders", "jacobi:n=x"], "must be of type int"),
        (["--decoders", "jacobi:q=3"], "has no parameter 'q'"),
        (["--decoders", "jacobi:n"], "malformed decoder parameter"),
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--models", "/no/such/model"], "check the path"),
        (["--config", "/no/such.toml"], "config file /no/such.toml not found"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_model_dir, tmp_path, capsys, extra, message):
    args = run_args(tiny_model_dir, tmp_path / "bad")
    for flag_value in zip(extra[::2], extra[1::2]):
        flag, value = flag_value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "bad" / "samples.jsonl").exists()


def test_malformed_config_and_foreign_output_dir(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "m.toml"
    bad.write_text("models = [unclosed\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    unknown = tmp_path / "u.toml"
    unknown.write_text('modelz = ["x"]\n')
    assert main(["run", "--config", str(unknown)]) == 2
    assert "unknown key 'modelz'" in capsys.readouterr().err
    out = tmp_path / "taken"
    assert main(run_args(tiny_model_dir, out)) == 0
    before = (out / "samples.jsonl").read_bytes()
    args = run_args(tiny_model_dir, out)
    args[args.index("--max-new-tokens") + 1] = "7"
    assert main(args) == 2
    assert "different arguments (max_new_tokens differ)" in capsys.readouterr().err
    assert (out / "samples.jsonl").read_bytes() == before


def test_config_file_and_flag_override(tiny_model_dir, tmp_path):
    cfg = tmp_path / "matrix.toml"
    cfg.write_text(
        f'models = ["{tiny_model_dir}"]\ndecoders = ["ar", "jacobi:n=3"]\ntasks = ["humaneval"]\n'
        'limit = 2\nmax-new-tokens = 6\ndevice = "cpu"\ndtype = "float32"\n'
    )
    out = tmp_path / "cfg"
    assert main(["run", "--config", str(cfg), "--limit", "1", "--output-path", str(out)]) == 0
    summary, samples = load(out)
    assert len(samples) == 2  # --limit 1 overrides the file's 2
    assert {r["decoder"] for r in summary["results"]} == {"ar", "jacobi:n=3"}


def test_split_decoder_list():
    assert split_decoder_list("ar,jacobi:n=16,seed=2,lookahead:w=5,n=7") == [
        "ar", "jacobi:n=16,seed=2", "lookahead:w=5,n=7",
    ]  # fmt: skip
    assert split_decoder_list("speculative:draft=self:layers=4,k=3;ar") == ["speculative:draft=self:layers=4,k=3", "ar"]


def test_list_shows_registered_names(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ar", "jacobi", "hf", "humaneval", "smollm2-135m"):
        assert name in out


def test_list_says_which_decoders_batch(capsys):
    from cllm_bench.decoders.base import batched_decoder_names

    assert batched_decoder_names() == ["ar", "cllm", "hf", "jacobi", "speculative"]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "batch > 1" in out
