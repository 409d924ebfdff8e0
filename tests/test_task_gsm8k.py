"""GSM8K: data loading, prompts, strict/flexible answer extraction, aggregate."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeTokenizer, decode

from cllm_bench.errors import DataError, UserError
from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import Sample, TaskOptions
from cllm_bench.tasks.gsm8k import (
    FEWSHOT_EXEMPLARS,
    GSM8K,
    extract_flexible,
    extract_strict,
    fewshot_text,
    gold_answer,
    normalize_number,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(), reason=f"shared data not found at {SHARED_DATA}"
)


def write_fixture(root: Path, split: str = "test", n: int = 3) -> Path:
    folder = root / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i:,}"})
        for i in range(n)
    ]
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_registered_with_class_attributes():
    assert TASKS.get("gsm8k") is GSM8K
    assert GSM8K.requires_execution is False
    assert GSM8K.default_max_new_tokens == 256


def test_samples_from_fixture(tmp_path):
    task = GSM8K(TaskOptions(data_dir=write_fixture(tmp_path, n=5)))
    samples = task.samples()
    assert [s.id for s in samples] == [f"gsm8k/test/{i}" for i in range(5)]
    assert samples[3].data["question"] == "What is 3 + 3?"
    assert samples[3].data["gold"] == "6"
    assert [s.id for s in task.samples(limit=2)] == ["gsm8k/test/0", "gsm8k/test/1"]


def test_train_split_option(tmp_path):
    write_fixture(tmp_path, split="train", n=4)
    task = GSM8K(TaskOptions(data_dir=tmp_path, extra={"split": "train"}))
    assert [s.id for s in task.samples()][-1] == "gsm8k/train/3"
    with pytest.raises(UserError, match="split"):
        GSM8K(TaskOptions(data_dir=tmp_path, extra={"split": "validation"})).samples()


def test_missing_file_names_the_expected_path(tmp_path):
    with pytest.raises(DataError) as info:
        GSM8K(TaskOptions(data_dir=tmp_path)).samples()
    message = str(info.value)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in message
    assert "--data-dir" in message and "gsm8k/test.jsonl" in message


def test_no_data_dir_without_datasets_names_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match="--data-dir"):
        GSM8K(TaskOptions(data_dir=None)).samples()


def test_corrupt_line_names_file_and_line(tmp_path):
    root = write_fixture(tmp_path, n=2)
    path = root / "gsm8k" / "test.jsonl"
    path.write_text(path.read_text() + '{"question": "broken",\n')
    with pytest.raises(DataError, match=r"test\.jsonl:3"):
        GSM8K(TaskOptions(data_dir=root)).samples()


def test_line_missing_a_field_names_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:2.*answer"):
        GSM8K(TaskOptions(data_dir=tmp_path)).samples()


# --- answer extraction -----------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, expected",
    [("1,000", "1000"), ("$18", "18"), ("18.", "18"), ("5.0", "5"), ("5.00", "5"), ("-3", "-3"),
     ("2.50", "2.5"), ("0.25", "0.25"), ("007", "7"), ("-$1,234.00", "-1234")],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_strict_prefers_hash_marker_then_answer_sentence():
    assert extract_strict("so 3 + 4 = 7\n#### 7") == "7"
    assert extract_strict("The answer is $1,200.") == "1200"
    assert extract_strict("The final answer is: **42**") == "42"
    assert extract_strict("#### 5 then The answer is 6") == "5"
    assert extract_strict("I think it is 12") is None


def test_flexible_takes_the_last_number():
    assert extract_flexible("3 apples and 4 pears make 7 fruits.") == "7"
    assert extract_flexible("It costs $2,500.00 in total.") == "2500"
    assert extract_flexible("no digits here") is None


def test_score_fields_and_continuation_cut(tmp_path):
    task = GSM8K(TaskOptions(data_dir=write_fixture(tmp_path, n=3)))
    sample = task.samples()[2]  # gold 4
    score = task.score(sample, ["2 + 2 = 4. The answer is 4.\n\nQ: What is 9 + 9?\nA: 18"])
    assert score == {"correct_strict": True, "correct_flexible": True, "pred_strict": "4", "pred_flexible": "4", "gold": "4"}
    loose = task.score(sample, ["2 plus 2 gives 4"])
    assert loose["correct_strict"] is False and loose["pred_strict"] is None and loose["correct_flexible"] is True
    assert task.score(sample, [""])["correct_flexible"] is False


def test_aggregate_reports_flexible_as_accuracy():
    scores = [
        {"correct_strict": True, "correct_flexible": True},
        {"correct_strict": False, "correct_flexible": True},
        {"correct_strict": False, "correct_flexible": False},
        {"correct_strict": False, "correct_flexible": False},
    ]
    metrics = GSM8K(TaskOptions()).aggregate(scores)
    assert metrics == {"accuracy": 0.5, "accuracy_strict": 0.25, "accuracy_flexible": 0.5, "n": 4}
    assert GSM8K(TaskOptions()).aggregate([])["accuracy"] is None


# --- prompts ---------------------------------------------------------------------------

SAMPLE = Sample(id="gsm8k/test/0", data={"question": "Tom has 3 apples. How many?", "answer": "#### 3", "gold": "3"})


def test_eight_shot_prompt_has_the_wei_exemplars():
    assert len(FEWSHOT_EXEMPLARS) == 8
    text = fewshot_text(SAMPLE.data["question"])
    assert text.startswith("Q: There are 15 trees in the grove.")
    assert text.count("Q: ") == 9 and text.count("The answer is") == 8
    assert text.endswith("Q: Tom has 3 apples. How many?\nA:")
    for _, answer in FEWSHOT_EXEMPLARS:  # every exemplar ends in the strict format
        assert extract_strict(answer) == extract_flexible(answer)


def test_prompt_selection():
    chat, base = FakeTokenizer(chat=True), FakeTokenizer(chat=False)
    zeroshot_chat = decode(GSM8K(TaskOptions()).prompt_ids(SAMPLE, chat))
    assert zeroshot_chat.startswith("<|user|>") and "The answer is N." in zeroshot_chat and "15 trees" not in zeroshot_chat
    base_default = decode(GSM8K(TaskOptions()).prompt_ids(SAMPLE, base))
    assert base_default == fewshot_text(SAMPLE.data["question"])
    eight_chat = decode(GSM8K(TaskOptions(extra={"prompt": "8shot"})).prompt_ids(SAMPLE, chat))
    assert eight_chat.count("<|assistant|>") == 9 and "15 trees" in eight_chat
    zeroshot_base = decode(GSM8K(TaskOptions(extra={"prompt": "zeroshot"})).prompt_ids(SAMPLE, base))
    assert "15 trees" not in zeroshot_base and zeroshot_base.endswith("Let's think step by step.")
    abel = decode(GSM8K(TaskOptions(extra={"prompt": "abel"})).prompt_ids(SAMPLE, chat))
    assert abel == "Question:\nTom has 3 apples. How many?\nAnswer:\nLet's think step by step.\n"
    with pytest.raises(UserError, match="prompt"):
        GSM8K(TaskOptions(extra={"prompt": "5shot"})).prompt_ids(SAMPLE, chat)


# --- the real test set -----------------------------------------------------------------

@needs_shared_data
def test_real_test_set_gold_scores_itself_and_a_derangement_does_not():
    task = GSM8K(TaskOptions(data_dir=SHARED_DATA))
    samples = task.samples()
    assert len(samples) == 1319
    own = task.aggregate([task.score(s, [s.data["answer"]]) for s in samples])
    assert own["accuracy_strict"] == 1.0 and own["accuracy_flexible"] == 1.0
    rng = random.Random(1234)
    order = list(range(len(samples)))
    while any(i == j for i, j in enumerate(order)):  # a derangement: no answer stays in place
        rng.shuffle(order)
    shuffled = task.aggregate([task.score(s, [samples[j].data["answer"]]) for s, j in zip(samples, order)])
    assert shuffled["accuracy"] < 0.05 and shuffled["accuracy_strict"] < 0.05


@needs_shared_data
def test_real_train_split_size():
    assert len(GSM8K(TaskOptions(data_dir=SHARED_DATA, extra={"split": "train"})).samples()) == 7473
    assert gold_answer("... #### 1,234") == "1234"
