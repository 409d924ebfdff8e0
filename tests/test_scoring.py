"""cllm_bench.scoring: predictions files and finished runs scored without a model."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from cllm_bench.errors import UserError
from cllm_bench.scoring import default_scores_path, rescore_run, score_predictions
from cllm_bench.tasks.base import TaskOptions

GSM8K = [
    ("Tom has 3 apples and buys 15 more. How many apples does he have?", "3 + 15 = 18\n#### 18"),
    ("A box holds 1,200 pens; 200 are sold. How many are left?", "1200 - 200 = 1000\n#### 1,000"),
    ("What is 7 times 6?", "7 * 6 = 42\n#### 42"),
    ("What is 10 minus 13?", "10 - 13 = -3\n#### -3"),
]
GOLD = ["The answer is 18.", "So 1000 pens are left. The answer is 1,000.", "#### 42", "It is -3"]
WRONG = ["The answer is 17.", "no idea", "#### 41", "3"]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    lines = [json.dumps({"question": q, "answer": a}) for q, a in GSM8K]
    (root / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def gsm8k_preds(path: Path, completions: list[str]) -> Path:
    return write_lines(path, [{"id": f"gsm8k/test/{i}", "completion": c} for i, c in enumerate(completions)])


# ----------------------------------------------------------------------- score_predictions
def test_gsm8k_gold_answers_score_one_and_wrong_answers_zero(tmp_path, data_dir):
    options = TaskOptions(data_dir=data_dir)
    gold = score_predictions("gsm8k", gsm8k_preds(tmp_path / "gold.jsonl", GOLD), options, None, quiet())
    assert gold["metrics"]["accuracy"] == 1.0
    assert [s["score"]["correct_flexible"] for s in gold["samples"]] == [True] * 4
    wrong = score_predictions("gsm8k", gsm8k_preds(tmp_path / "wrong.jsonl", WRONG), options, None, quiet())
    assert wrong["metrics"]["accuracy"] == 0.0
    assert wrong["n_predictions"] == wrong["n_task_samples"] == 4


def test_scores_file_is_written_next_to_the_predictions(tmp_path, data_dir):
    preds = gsm8k_preds(tmp_path / "preds.jsonl", [GOLD[0], WRONG[1]])
    console = Console(file=io.StringIO(), width=200)
    doc = score_predictions("gsm8k", preds, TaskOptions(data_dir=data_dir), None, console)
    out = tmp_path / "preds.scores.json"
    assert default_scores_path(preds) == out
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    keys = {"task", "predictions", "scored_at", "n_predictions", "n_task_samples", "options", "sandbox", "metrics", "samples"}
    assert set(doc) == keys
    assert doc["metrics"]["accuracy"] == 0.5 and doc["n_predictions"] == 2
    assert doc["sandbox"]["isolation"] is None  # gsm8k runs no model-written code
    printed = console.file.getvalue()
    assert "accuracy" in printed and "0.5000" in printed and str(out) in printed


def test_explicit_output_path(tmp_path, data_dir):
    out = tmp_path / "sub" / "metrics.json"
    score_predictions("gsm8k", gsm8k_preds(tmp_path / "p.jsonl", GOLD), TaskOptions(data_dir=data_dir), out, quiet())
    assert json.loads(out.read_text())["metrics"]["accuracy"] == 1.0
    assert not (tmp_path / "p.scores.json").exists()


def test_humaneval_canonical_solutions_pass_only_with_opt_in(tmp_path):
    from cllm_bench.tasks.humaneval import HumanEval

    problems = HumanEval(TaskOptions()).samples(3)
    rows = [{"id": s.id, "completion": s.data["canonical_solution"]} for s in problems[:2]]
    rows.append({"id": problems[2].id, "completion": "    return None\n"})
    preds = write_lines(tmp_path / "he.jsonl", rows)
    off = score_predictions("humaneval", preds, TaskOptions(), tmp_path / "off.json", quiet())
    assert off["metrics"]["accuracy"] is None and "allow-code-execution" in off["metrics"]["note"]
    assert all(s["score"]["passed"] is None for s in off["samples"])
    on = score_predictions("humaneval", preds, TaskOptions(allow_code_execution=True), tmp_path / "on.json", quiet())
    assert [s["score"]["passed"] for s in on["samples"]] == [True, True, False]
    assert on["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_multi_turn_completions_field(tmp_path):
    data = tmp_path / "data" / "mt_bench"
    data.mkdir(parents=True)
    question = {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now another."]}
    (data / "question.jsonl").write_text(json.dumps(question) + "\n")
    preds = write_lines(tmp_path / "mt.jsonl", [{"id": "mt_bench/81", "completions": ["a haiku", "another"]}])
    doc = score_predictions("mt_bench", preds, TaskOptions(data_dir=tmp_path / "data"), None, quiet())
    assert doc["n_predictions"] == 1 and "accuracy" in doc["metrics"]
    one_turn = write_lines(tmp_path / "mt1.jsonl", [{"id": "mt_bench/81", "completion": "a haiku"}])
    with pytest.raises(UserError, match=r"mt1\.jsonl:1: .*2 turn"):
        score_predictions("mt_bench", one_turn, TaskOptions(data_dir=tmp_path / "data"), None, quiet())


BAD_LINES = [
    ('{"id": "gsm8k/test/0", "completion": "1"}\n{"id": "gsm8k/test/1", "completion": ',
     r"bad\.jsonl:2: not valid JSON"),
    ('["gsm8k/test/0", "x"]', r"bad\.jsonl:1: expected a JSON object"),
    ('{"completion": "x"}', r'bad\.jsonl:1: missing or empty field "id"'),
    ('{"id": "gsm8k/test/0"}', r'bad\.jsonl:1: has neither of "completion" and "completions"'),
    ('{"id": "gsm8k/test/0", "completion": "a", "completions": ["a"]}', r"bad\.jsonl:1: has both"),
    ('{"id": "gsm8k/test/0", "completion": 18}', r'bad\.jsonl:1: "completion" must be a string'),
    ('{"id": "gsm8k/test/0", "completions": "x"}', r'bad\.jsonl:1: "completions" must be a non-empty list'),
    ('{"id": "gsm8k/test/0", "completion": "a"}\n\n{"id": "gsm8k/test/0", "completion": "b"}',
     r"bad\.jsonl:3: duplicate id 'gsm8k/test/0' \(first on line 1\)"),
    ('{"id": "gsm8k/test/0", "completion": "a"}\n{"id": "gsm8k/test/99", "completion": "b"}',
     r"bad\.jsonl:2: unknown id 'gsm8k/test/99' for task gsm8k \(ids look like 'gsm8k/test/0'"),
    ('{"id": "gsm8k/test/0", "completions": ["a", "b"]}', r"bad\.jsonl:1: sample 'gsm8k/test/0' has 1 turn\(s\) but 2"),
    ("\n\n", r"holds no predictions"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "message"), BAD_LINES)
def test_bad_predictions_name_file_and_line(tmp_path, data_dir, content, message):
    preds = tmp_path / "bad.jsonl"
    preds.write_text(content)
    with pytest.raises(UserError, match=message):
        score_predictions("gsm8k", preds, TaskOptions(data_dir=data_dir), None, quiet())
    assert not default_scores_path(preds).exists()


def test_missing_file_and_unknown_task(tmp_path, data_dir):
    with pytest.raises(UserError, match="predictions file not found"):
        score_predictions("gsm8k", tmp_path / "nope.jsonl", TaskOptions(data_dir=data_dir), None, quiet())
    preds = gsm8k_preds(tmp_path / "p.jsonl", GOLD)
    with pytest.raises(UserError, match="unknown task 'gsm9k'"):
        score_predictions("gsm9k", preds, TaskOptions(data_dir=data_dir), None, quiet())


# ----------------------------------------------------------------------- rescore_run
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """A real run folder: tiny model, ar, gsm8k (3 samples, 8 tokens)."""
    from cllm_bench.runner import RunConfig, run_matrix

    root = tmp_path_factory.mktemp("rescore")
    data = root / "data"
    (data / "gsm8k").mkdir(parents=True)
    lines = [json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K]
    (data / "gsm8k" / "test.jsonl").write_text("".join(lines))
    config = RunConfig(
        models=[str(tiny_model_dir)], decoders=["ar"], tasks=["gsm8k"], limit=3, max_new_tokens=8,
        device="cpu", dtype="float32", data_dir=str(data), output_path=str(root / "run"),
    )  # fmt: skip
    return run_matrix(config, quiet()), data


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_rescore_writes_a_new_summary_and_leaves_the_run_untouched(finished_run, tmp_path):
    run, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(run, work)
    before = snapshot(work)
    console = Console(file=io.StringIO(), width=250)
    out = rescore_run(work, TaskOptions(), console)  # data dir from the run's own config
    assert re.fullmatch(r"summary\.rescored-\d{8}-\d{6}(-\d+)?\.json", out.name) and out.parent == work
    after = snapshot(work)
    # samples.jsonl, summary.json, run_config.json: byte-identical
    assert {k: v for k, v in after.items() if k != out.name} == before
    original = json.loads((work / "summary.json").read_text())
    doc = json.loads(out.read_text())
    assert set(doc) == {"provenance", "rescored_at", "rescore", "results"}
    assert doc["provenance"] == original["provenance"]
    assert doc["rescore"]["options"]["data_dir"] == original["provenance"]["config"]["data_dir"]
    assert len(doc["results"]) == len(original["results"]) == 1
    new, old = doc["results"][0], original["results"][0]
    assert set(new) == set(old)
    assert {k: v for k, v in new.items() if k not in ("accuracy", "task_metrics")} == {
        k: v for k, v in old.items() if k not in ("accuracy", "task_metrics")
    }
    assert new["task_metrics"] == old["task_metrics"] and new["accuracy"] == old["accuracy"]
    assert "rescored" in console.file.getvalue()
    second = rescore_run(work, TaskOptions(), quiet())
    assert second != out and out.exists() and second.exists()


def test_rescore_recomputes_accuracy_and_copies_speed(finished_run, tmp_path):
    run, data = finished_run
    work = tmp_path / "run"
    shutil.copytree(run, work)
    lines = [json.loads(line) for line in (work / "samples.jsonl").read_text().splitlines()]
    gold = {f"gsm8k/test/{i}": text for i, text in enumerate(GOLD)}
    for rec in lines:
        rec["completions"] = [gold[rec["sample_id"]]]
    (work / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    original = json.loads((work / "summary.json").read_text())["results"][0]
    out = rescore_run(work, TaskOptions(data_dir=data), quiet())
    new = json.loads(out.read_text())["results"][0]
    assert new["accuracy"] == 1.0 and new["task_metrics"]["accuracy_strict"] == 1.0 and original["accuracy"] == 0.0
    speed = ("tokens_per_s", "tokens_per_forward", "ttft_s", "decode_s_total", "generated_tokens", "speedup", "n_samples")
    for key in speed:
        assert new[key] == original[key]


def test_rescore_ignores_a_partial_last_line_without_cutting_it(finished_run, tmp_path):
    run, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(run, work)
    with open(work / "samples.jsonl", "a") as fh:
        fh.write('{"model": "x", "deco')
    before = (work / "samples.jsonl").read_bytes()
    console = Console(file=io.StringIO(), width=200)
    rescore_run(work, TaskOptions(), console)
    assert (work / "samples.jsonl").read_bytes() == before
    assert "unfinished last line" in console.file.getvalue()


def test_rescore_bad_folders(finished_run, tmp_path):
    run, _ = finished_run
    with pytest.raises(UserError, match="not a cllm-bench run folder: samples.jsonl is missing"):
        rescore_run(tmp_path, TaskOptions(), quiet())
    work = tmp_path / "run"
    shutil.copytree(run, work)
    (work / "summary.json").unlink()
    with pytest.raises(UserError, match="summary.json is missing"):
        rescore_run(work, TaskOptions(), quiet())
    shutil.copy(run / "summary.json", work / "summary.json")
    (work / "samples.jsonl").write_text('{"model": "m"}\n')
    with pytest.raises(UserError, match=r"samples\.jsonl:1: record lacks decoder, task, sample_id, completions"):
        rescore_run(work, TaskOptions(), quiet())
    (work / "samples.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"samples\.jsonl:1: corrupt line"):
        rescore_run(work, TaskOptions(), quiet())
    rec = json.loads((run / "samples.jsonl").read_text().splitlines()[0]) | {"sample_id": "gsm8k/test/77"}
    (work / "samples.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(UserError, match=r"samples\.jsonl:1: unknown id 'gsm8k/test/77'"):
        rescore_run(work, TaskOptions(), quiet())
    assert not list(work.glob("summary.rescored-*"))
