"""Everything is validated before anything is written: one ``error:`` line, exit 2, the run
folder absent or unchanged, and the corrected command then works. Also the run-folder lock,
non-record log lines, unwritable outputs of ``run``, ``score`` and ``report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cllm_bench.cli import main
from cllm_bench.run_folder import LOCK_FILE, RunFolderLock
from conftest import REPO
from test_cli_run import run_args

ROOT_USER = os.geteuid() == 0


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` (None when it does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_flags(args: list[str], *pairs: str) -> list[str]:
    """``args`` with each ``--flag value`` pair replaced (or appended)."""
    args = list(args)
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def refused(args: list[str], capsys, *needles: str) -> str:
    """Run ``args``; assert exit 2 and one ``error:`` line holding every needle; return it."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:"), err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def unknown_type_model(tmp_path_factory, tiny_model_dir) -> Path:
    """A copy of the tiny model folder whose config.json names a model_type nobody ships."""
    folder = tmp_path_factory.mktemp("unknown-type")
    for f in tiny_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llamaa"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


BAD_FLAGS = [
    (("--models", ""), ("--models", "empty")),
    (("--device", "bogus"), ("--device", "bogus")),
    (("--limit", "-1"), ("--limit", ">= 0")),
    (("--max-new-tokens", "0"), ("--max-new-tokens", ">= 1")),
    (("--repeats", "0"), ("--repeats", ">= 1")),
    (("--warmup", "-1"), ("--warmup", ">= 0")),
    (("--task-args", "nope=1"), ("'nope'", "humaneval: timeout_s")),
    (("--task-args", "timeout_s=abc"), ("timeout_s='abc'", "positive number")),
    (("--decoders", "ar,medusa:heads=/no/such/heads"), ("heads='/no/such/heads'", "missing")),
    (("--decoders", "ar,speculative:draft=/no/such/draft"), ("/no/such/draft", "check the path")),
    (("--decoders", "ar,speculative:draft=self:layers=0"), ("K >= 1",)),
]


@pytest.mark.parametrize("pairs, needles", BAD_FLAGS, ids=[" ".join(p) for p, _ in BAD_FLAGS])
def test_bad_value_refused_before_any_write(tiny_model_dir, tmp_path, capsys, pairs, needles):
    out = tmp_path / "run"
    refused(with_flags(run_args(tiny_model_dir, out), *pairs), capsys, *needles)
    assert not out.exists()


def test_unknown_model_type_refused(unknown_type_model, tmp_path, capsys):
    out = tmp_path / "run"
    refused(run_args(unknown_type_model, out), capsys, "model_type 'llamaa'", "config.json")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    refused(with_flags(run_args(tiny_model_dir, out), "--device", "cuda"), capsys, "no CUDA device", "--device cpu")
    assert not out.exists()


@pytest.mark.parametrize(
    "toml, needles",
    [('limit = "abc"', ("limit must be an integer", "'abc'")), ("repeats = true", ("repeats must be an integer",)),
     ('models = "x"\ndecoders = 3', ("decoders must be a list",)), ("log_samples = 1", ("true or false",)),
     ('task_args = "split=dev"', ("task_args must be a table",))],
)  # fmt: skip
def test_config_file_types_refused(tmp_path, capsys, toml, needles):
    config = tmp_path / "run.toml"
    config.write_text(toml + f'\noutput_path = "{tmp_path / "run"}"\n')
    refused(["run", "--config", str(config)], capsys, str(config), *needles)
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_unchanged_by_bad_commands_then_corrected_command_resumes(
    tiny_model_dir, unknown_type_model, tmp_path, capsys
):
    """A finished run folder: every bad command is refused for its own mistake (not for
    'different arguments') and leaves the folder byte-for-byte as it was."""
    out = tmp_path / "run"
    good = run_args(tiny_model_dir, out)
    assert main(good) == 0
    capsys.readouterr()
    before = snapshot(out)
    for pairs, needles in BAD_FLAGS:
        err = refused(with_flags(good, *pairs), capsys, *needles)
        assert "different arguments" not in err
        assert snapshot(out) == before
    refused(run_args(unknown_type_model, out), capsys, "model_type")
    assert snapshot(out) == before
    assert main(good) == 0  # same arguments: resumes (nothing left to do)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6


def test_corrected_command_runs_in_the_folder_a_bad_one_named(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    refused(with_flags(run_args(tiny_model_dir, out), "--max-new-tokens", "0"), capsys, "--max-new-tokens")
    assert not out.exists()
    assert main(with_flags(run_args(tiny_model_dir, out), "--decoders", "ar")) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3


def test_task_args_accepted_by_one_task_of_the_run_pass_validation(tiny_model_dir, tmp_path):
    from cllm_bench.errors import UserError
    from cllm_bench.run_checks import check_task_args
    from cllm_bench.tasks.gsm8k import GSM8K
    from cllm_bench.tasks.humaneval import HumanEval

    tasks = {"humaneval": HumanEval(), "gsm8k": GSM8K()}
    check_task_args({"timeout_s": "3", "split": "test"}, tasks)  # each read by one task
    with pytest.raises(UserError, match="'memory'"):
        check_task_args({"memory": "3"}, tasks)
    with pytest.raises(UserError, match="timeout_s='abc': must be a positive number"):
        check_task_args({"timeout_s": "abc"}, tasks)
    with pytest.raises(UserError, match="must be one of: test, train"):
        check_task_args({"split": "dev"}, tasks)


# ----------------------------------------------------------------------- output path
def test_output_path_that_is_a_file(tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me\n")
    refused(run_args(tiny_model_dir, target), capsys, "is a file", "--output-path")
    assert target.read_text() == "keep me\n"
    refused(run_args(tiny_model_dir, target / "sub"), capsys, "is a file")


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders; the /proc case covers the write failure")
def test_output_path_in_a_read_only_folder(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        refused(run_args(tiny_model_dir, folder / "run"), capsys, "not writable")
        refused(run_args(tiny_model_dir, folder), capsys, "not writable")
    finally:
        folder.chmod(0o755)


def test_output_path_where_nothing_can_be_written(tiny_model_dir, capsys):
    """/proc refuses new folders even to root: the first write fails, cleanly."""
    refused(run_args(tiny_model_dir, Path("/proc/cllm-bench-no-such-run")), capsys, "--output-path")


# ----------------------------------------------------------------------- lock
def test_second_run_on_a_locked_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolderLock(out):
        refused(run_args(tiny_model_dir, out), capsys, "another cllm-bench run", f"pid {os.getpid()}", str(out))
        assert not (out / "run_config.json").exists()
    assert main(run_args(tiny_model_dir, out)) == 0  # released: the same command now runs
    assert (out / LOCK_FILE).exists()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cllm_bench.run_folder import RunFolderLock
        lock = RunFolderLock(Path({str(out)!r})).__enter__()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        from cllm_bench.errors import UserError

        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            RunFolderLock(out).__enter__()
        proc.kill()
        proc.wait(timeout=30)
        with RunFolderLock(out):  # the kernel dropped the dead holder's lock
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------- resume log
@pytest.mark.parametrize("line", ["[1, 2]", "42", '"text"', '{"model": "m"}'])
def test_non_record_line_in_samples_names_file_and_line(tiny_model_dir, tmp_path, capsys, line):
    out = tmp_path / "run"
    args = with_flags(run_args(tiny_model_dir, out), "--decoders", "ar", "--limit", "1")
    assert main(args) == 0
    capsys.readouterr()
    log = out / "samples.jsonl"
    log.write_text(log.read_text() + line + "\n")
    refused(args, capsys, f"{log} line 2", "delete that line")


# ----------------------------------------------------------------------- score / report outputs
def test_score_output_that_is_a_folder_or_unwritable(tmp_path, capsys):
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "so #### 2"}) + "\n")
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "gsm8k/test/0", "completion": "2"}) + "\n")
    base = ["score", "--task", "gsm8k", "--predictions", str(preds), "--data-dir", str(tmp_path / "data")]
    refused(base + ["--output", str(tmp_path)], capsys, "is a folder", "--output")
    refused(base + ["--output", "/proc/cllm-bench-no-such/scores.json"], capsys, "--output")
    assert main(base + ["--output", str(tmp_path / "s.json")]) == 0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("small") / "run"
    assert main(with_flags(run_args(tiny_model_dir, out), "--limit", "1")) == 0
    return out


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_report_on_a_summary_holding_non_finite_numbers(small_run, tmp_path, capsys, token):
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_bytes((small_run / "samples.jsonl").read_bytes())
    summary = json.loads((small_run / "summary.json").read_text())
    text = json.dumps(summary).replace('"speedup": 1.0', f'"speedup": {token}', 1)
    assert token in text
    (run / "summary.json").write_text(text)
    refused(["report", str(run), "--output", str(tmp_path / "rep")], capsys, token, "summary.json")
    assert not (tmp_path / "rep").exists()


def test_report_output_unwritable_or_a_file(small_run, tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("x")
    refused(["report", str(small_run), "--output", str(afile)], capsys, "not a folder")
    refused(["report", str(small_run), "--output", "/proc/cllm-bench-no-such-report"], capsys, "--output")
