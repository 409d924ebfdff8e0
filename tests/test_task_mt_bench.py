"""MT-bench: two-turn prompts, no-judge aggregate, FastChat-style judging with a fake judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeTokenizer, decode

from cllm_bench.errors import DataError
from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import Sample, TaskOptions
from cllm_bench.tasks.mt_bench import (
    NO_JUDGE_NOTE,
    JudgeConfig,
    MTBench,
    conversation,
    judge_prompt,
    parse_judge_rating,
    raw_conversation,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "mt_bench" / "question.jsonl").is_file(), reason=f"shared data not found at {SHARED_DATA}"
)


JUDGE_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "SYS1",
     "prompt_template": "[Q]{question}[A]{answer}", "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "SYS1M",
     "prompt_template": "[Q]{question}[REF]{ref_answer_1}[A]{answer}", "output_format": "[[rating]]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "SYS2",
     "prompt_template": "[Q1]{question_1}[A1]{answer_1}[Q2]{question_2}[A2]{answer_2}", "output_format": "[[rating]]"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "SYS2M",
     "prompt_template": "[Q1]{question_1}[R1]{ref_answer_1}[Q2]{question_2}[R2]{ref_answer_2}[A1]{answer_1}[A2]{answer_2}",
     "output_format": "[[rating]]"},
]


def write_fixture(root: Path) -> Path:
    folder = root / "mt_bench"
    (folder / "reference_answer").mkdir(parents=True)
    questions = [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
        {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
        {"question_id": 121, "category": "coding", "turns": ["Write add().", "Now sub()."]},
    ]
    (folder / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in JUDGE_PROMPTS))
    references = [
        {"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["4", "6"]}]},
        {"question_id": 121, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["def add", "def sub"]}]},
    ]
    (folder / "reference_answer" / "gpt-4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in references))
    return root


@pytest.fixture()
def task(tmp_path) -> MTBench:
    return MTBench(TaskOptions(data_dir=write_fixture(tmp_path)))


def test_registered_with_class_attributes():
    assert TASKS.get("mt_bench") is MTBench
    assert MTBench.requires_execution is False
    assert MTBench.default_max_new_tokens == 512


def test_samples_and_turns(task):
    samples = task.samples()
    assert [s.id for s in samples] == ["mt_bench/81", "mt_bench/111", "mt_bench/121"]
    assert samples[1].data == {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}
    assert task.n_turns(samples[0]) == 2
    assert len(task.samples(limit=1)) == 1


def test_missing_questions_file_names_path(tmp_path):
    with pytest.raises(DataError) as info:
        MTBench(TaskOptions(data_dir=tmp_path)).samples()
    assert str(tmp_path / "mt_bench" / "question.jsonl") in str(info.value)
    with pytest.raises(DataError, match="--data-dir"):
        MTBench(TaskOptions(data_dir=None)).samples()


def test_chat_history_for_each_turn(task):
    sample = task.samples()[0]
    chat = FakeTokenizer(chat=True)
    first = decode(task.prompt_ids(sample, chat))
    assert first == "<|user|>Write a poem.\n<|assistant|>"
    second = decode(task.prompt_ids(sample, chat, ["Roses are red."]))
    assert second == "<|user|>Write a poem.\n<|assistant|>Roses are red.\n<|user|>Make it shorter.\n<|assistant|>"
    with pytest.raises(ValueError):
        task.prompt_ids(sample, chat, ["a", "b"])


def test_raw_fallback_without_chat_template(task):
    sample = task.samples()[0]
    base = FakeTokenizer(chat=False)
    assert decode(task.prompt_ids(sample, base)) == "USER: Write a poem.\nASSISTANT:"
    assert decode(task.prompt_ids(sample, base, ["Roses."])) == (
        "USER: Write a poem.\nASSISTANT: Roses.\nUSER: Make it shorter.\nASSISTANT:"
    )
    assert raw_conversation(conversation(["q"], [])) == "USER: q\nASSISTANT:"


def test_without_judge_accuracy_is_none_with_note(task):
    samples = task.samples()
    scores = [task.score(s, ["a", "b"]) for s in samples]
    assert all(s["judged"] is False for s in scores)
    metrics = task.aggregate(scores)
    assert metrics["accuracy"] is None and metrics["note"] == NO_JUDGE_NOTE
    assert metrics["n"] == 3


@pytest.mark.parametrize(
    "text, rating",
    [("Good answer. Rating: [[8]]", 8.0), ("Rating: [[8.5]] and later [[2]]", 8.5), ("Rating: [7]", 7.0),
     ("no rating", None), ("Rating: [[11]]", None), ("[[0]]", None)],
)
def test_parse_judge_rating(text, rating):
    assert parse_judge_rating(text) == rating


def test_judge_prompts_pick_templates_and_references(task):
    config = task.judge_config("fake-judge")
    writing, math, _ = task.samples()
    general = judge_prompt(writing, ["poem", "short poem"], config.prompts, None)
    assert [r.prompt_name for r in general] == ["single-v1", "single-v1-multi-turn"]
    assert general[0].system == "SYS1" and general[0].user == "[Q]Write a poem.[A]poem"
    assert general[1].user == "[Q1]Write a poem.[A1]poem[Q2]Make it shorter.[A2]short poem"
    assert general[1].messages() == [{"role": "system", "content": "SYS2"}, {"role": "user", "content": general[1].user}]
    with_ref = judge_prompt(math, ["4", "6"], config.prompts, config.references[111])
    assert [r.prompt_name for r in with_ref] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert with_ref[0].user == "[Q]What is 2+2?[REF]4[A]4"
    assert with_ref[1].user == "[Q1]What is 2+2?[R1]4[Q2]And 3+3?[R2]6[A1]4[A2]6"
    with pytest.raises(DataError, match="reference"):
        judge_prompt(math, ["4", "6"], config.prompts, None)
    assert len(judge_prompt(writing, ["only one"], config.prompts, None)) == 1


def test_score_with_fake_judge_and_aggregate_by_category(task):
    config = task.judge_config("fake-judge")
    calls: list[list[dict[str, str]]] = []
    ratings = {"SYS1": "[[8]]", "SYS2": "[[6]]", "SYS1M": "[[10]]", "SYS2M": "no rating given"}

    def fake_judge(messages: list[dict[str, str]]) -> str:
        calls.append(messages)
        return f"Explanation. Rating: {ratings[messages[0]['content']]}"

    samples = task.samples()
    scores = [task.score_with_judge(s, ["first", "second"], fake_judge, config) for s in samples]
    assert len(calls) == 6
    assert scores[0]["judged"] is True and scores[0]["ratings"] == [8.0, 6.0]
    assert scores[1]["ratings"] == [10.0, None] and scores[1]["judge_model"] == "fake-judge"
    metrics = task.aggregate(scores)
    assert metrics["accuracy"] is None
    assert metrics["score_mean"] == pytest.approx((8 + 6 + 10 + 10) / 4)
    assert metrics["score_by_category"] == {"coding": 10.0, "math": 10.0, "writing": 7.0}
    assert metrics["score_by_turn"] == {"1": pytest.approx(28 / 3), "2": 6.0}
    assert metrics["judge_failures"] == 2
    # without a preloaded config the task reads the judge files itself
    assert task.score_with_judge(samples[0], ["a", "b"], fake_judge)["ratings"] == [8.0, 6.0]


def test_judge_config_requires_its_files(tmp_path):
    (tmp_path / "mt_bench").mkdir()
    with pytest.raises(DataError, match="judge_prompts.jsonl"):
        JudgeConfig.from_data_dir(tmp_path)
    (tmp_path / "mt_bench" / "judge_prompts.jsonl").write_text(json.dumps(JUDGE_PROMPTS[0]) + "\n")
    with pytest.raises(DataError, match="single-math-v1"):
        JudgeConfig.from_data_dir(tmp_path)


@needs_shared_data
def test_real_data_80_questions_and_judge_files():
    task = MTBench(TaskOptions(data_dir=SHARED_DATA))
    samples = task.samples()
    assert len(samples) == 80
    assert all(task.n_turns(s) == 2 for s in samples)
    config = task.judge_config()
    needing_reference = [s for s in samples if s.data["category"] in ("math", "reasoning", "coding")]
    assert len(needing_reference) == 30
    for sample in needing_reference:
        requests = judge_prompt(sample, ["x", "y"], config.prompts, config.references[sample.data["question_id"]])
        assert [r.prompt_name for r in requests] == ["single-math-v1", "single-math-v1-multi-turn"]
        assert "[The Start of Reference Answer]" in requests[0].user
    requests = judge_prompt(samples[0], ["x", "y"], config.prompts, None)
    assert 'Rating: [[5]]' in requests[0].user and "You are a helpful assistant." == requests[0].system
    assert isinstance(samples[0], Sample)
