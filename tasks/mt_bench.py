"""MT-bench: 80 two-turn chat questions in 8 categories; quality through an optional judge.

Data: ``<data_dir>/mt_bench/question.jsonl`` (fields question_id, category, turns); for
judging also ``mt_bench/judge_prompts.jsonl`` and ``mt_bench/reference_answer/gpt-4.jsonl``
(FastChat ``llm_judge`` files).

Generation: two turns per question (:meth:`MTBench.n_turns`). Turn k's prompt is the
conversation so far - user turn 1, the model's own answer 1, ..., user turn k - through
the chat template, or "USER: ...\\nASSISTANT: ..." lines for models without one.

Quality: speed numbers are the runner's; without a judge, :meth:`MTBench.score` returns
``{"judged": False}`` and the aggregate has ``accuracy`` None with a note. With a judge,
the runner calls :meth:`MTBench.score_with_judge` with a function that runs the judge
model on chat messages; FastChat's single-answer grading (1-10) is reproduced: turn 1
with "single-v1" and turn 2 with "single-v1-multi-turn", or their "single-math-v1" variants
with the GPT-4 reference answers for the categories math, reasoning and coding. The
aggregate then reports ``score_mean`` (mean over all rated turns, as FastChat's
``show_result``), ``score_by_category`` and ``score_by_turn``; ``accuracy`` stays None.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cllm_bench.errors import DataError
from cllm_bench.registry import register_task
from cllm_bench.tasks.base import Sample, Task, encode_chat, encode_raw
from cllm_bench.tasks.data_files import data_file, read_jsonl

QUESTIONS_FILE = "mt_bench/question.jsonl"
JUDGE_PROMPTS_FILE = "mt_bench/judge_prompts.jsonl"
REFERENCE_FILE = "mt_bench/reference_answer/gpt-4.jsonl"
#: categories judged against a reference answer (FastChat NEED_REF_CATS)
REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding"})
NO_JUDGE_NOTE = "quality not computed: pass --judge MODEL"
JUDGED_NOTE = "MT-bench quality is score_mean (judge rating 1-10), not an accuracy"

#: generate_fn(messages) -> the judge model's reply; messages are chat dicts
#: ({"role": "system"|"user", "content": ...}) to render with the judge's chat template.
JudgeFn = Callable[[list[dict[str, str]]], str]

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call: grade ``turn`` (0-based) of a sample with ``prompt_name``."""

    turn: int
    prompt_name: str
    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class JudgeConfig:
    """Judge prompt templates (by name) and reference answers (by question id).

    Build it with :meth:`from_data_dir`; ``model`` only labels results.
    """

    prompts: dict[str, dict[str, Any]]
    references: dict[int, list[str]] = field(default_factory=dict)
    model: str = ""

    @classmethod
    def from_data_dir(cls, data_dir: Path | str | None, model: str = "") -> "JudgeConfig":
        prompts_path = data_file(data_dir, JUDGE_PROMPTS_FILE, "mt_bench judge")
        prompts = {p["name"]: p for p in read_jsonl(prompts_path, required=("name", "system_prompt", "prompt_template"))}
        missing = [n for n in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn") if n not in prompts]
        if missing:
            raise DataError(f"{prompts_path}: lacks the judge prompt(s) {', '.join(missing)}; re-download FastChat's judge_prompts.jsonl")
        ref_path = data_file(data_dir, REFERENCE_FILE, "mt_bench judge")
        references = {
            int(r["question_id"]): list(r["choices"][0]["turns"])
            for r in read_jsonl(ref_path, required=("question_id", "choices"))
        }
        return cls(prompts=prompts, references=references, model=model)


# --- pure functions --------------------------------------------------------------------

def conversation(turns: list[str], previous_answers: list[str]) -> list[dict[str, str]]:
    """Chat messages for the next turn: user/assistant pairs for the answered turns, then
    the next user turn. Requires ``len(previous_answers) < len(turns)``."""
    k = len(previous_answers)
    if k >= len(turns):
        raise ValueError(f"{k} previous answers for a {len(turns)}-turn question: nothing left to ask")
    messages: list[dict[str, str]] = []
    for question, answer in zip(turns, previous_answers):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": turns[k]}]


def raw_conversation(messages: list[dict[str, str]]) -> str:
    """"USER: ...\\nASSISTANT: ..." text for models without a chat template, ending with
    "ASSISTANT:" for the model to continue."""
    names = {"user": "USER", "assistant": "ASSISTANT", "system": "SYSTEM"}
    lines = [f"{names[m['role']]}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nASSISTANT:"


def judge_prompt(
    sample: Sample,
    answers: list[str],
    judge_prompts: dict[str, dict[str, Any]],
    reference: list[str] | None,
) -> list[JudgeRequest]:
    """FastChat single-answer grading requests, one per answered turn (at most 2).

    Turn 1 uses "single-v1", turn 2 "single-v1-multi-turn" (the whole conversation, the
    judge focusing on the second answer); for categories in :data:`REFERENCE_CATEGORIES`
    the "single-math-v1..." variants with ``reference`` (the reference answers per turn),
    which must then be given.
    """
    turns, category = sample.data["turns"], sample.data["category"]
    needs_reference = category in REFERENCE_CATEGORIES
    if needs_reference and not reference:
        raise DataError(f"mt_bench: question {sample.data['question_id']} ({category}) needs a reference answer; none found in {REFERENCE_FILE}")
    requests: list[JudgeRequest] = []
    for turn in range(min(len(answers), len(turns), 2)):
        name = ("single-math-v1" if needs_reference else "single-v1") + ("-multi-turn" if turn == 1 else "")
        template = judge_prompts[name]
        fields: dict[str, str] = {"question": turns[0], "answer": answers[0], "question_1": turns[0], "answer_1": answers[0]}
        if turn == 1:
            fields.update(question_2=turns[1], answer_2=answers[1])
        if needs_reference:
            fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
        requests.append(JudgeRequest(turn, name, template["system_prompt"], template["prompt_template"].format(**fields)))
    return requests


def parse_judge_rating(text: str) -> float | None:
    """The rating in a judge reply: the first "[[x]]" (else "[x]"), as FastChat; None when
    absent or outside 1-10."""
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 1.0 <= value <= 10.0 else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- the task --------------------------------------------------------------------------

class MultiTurnChat(Task):
    """Shared machinery of multi-turn chat tasks (MT-bench, Spec-Bench): samples carry
    ``data["turns"]`` (user turns) and ``data["category"]``; turn k's prompt is the
    conversation so far (:func:`conversation`), through the chat template or as
    "USER: ...\\nASSISTANT:" lines (:func:`raw_conversation`). The runner passes ``ar``'s
    own earlier answers, so every decoder continues the same conversation."""

    def n_turns(self, sample: Sample) -> int:
        return len(sample.data["turns"])

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        messages = conversation(sample.data["turns"], list(previous_answers or []))
        if self.use_chat(tokenizer):
            return encode_chat(tokenizer, messages)
        return encode_raw(tokenizer, raw_conversation(messages))

    def stop_strings(self, sample: Sample) -> list[str]:
        # a base model continuing the raw transcript starts the next user turn
        return ["\nUSER:"] if self.options.prompt_style == "raw" else []


@register_task("mt_bench")
class MTBench(MultiTurnChat):
    """MT-bench: two-turn chat; speed from the runner, quality from an optional judge."""

    description = "MT-bench: 80 two-turn chat questions, speed always, quality with an optional judge model"
    requires_execution = False
    default_max_new_tokens = 512

    def samples(self, limit: int | None = None) -> list[Sample]:
        path = data_file(self.options.data_dir, QUESTIONS_FILE, "mt_bench")
        records = read_jsonl(path, required=("question_id", "category", "turns"))
        if limit is not None:
            records = records[:limit]
        return [
            Sample(
                id=f"mt_bench/{r['question_id']}",
                data={"question_id": int(r["question_id"]), "category": r["category"], "turns": list(r["turns"])},
            )
            for r in records
        ]

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        return {"judged": False, "category": sample.data["category"]}

    def judge_config(self, model: str = "") -> JudgeConfig:
        """The judge prompts and references of this task's data directory."""
        return JudgeConfig.from_data_dir(self.options.data_dir, model)

    def score_with_judge(
        self,
        sample: Sample,
        completions: list[str],
        generate_fn: JudgeFn,
        config: JudgeConfig | None = None,
    ) -> dict[str, Any]:
        """Score with a judge model: ``generate_fn(messages) -> reply`` is called once per
        turn with a system + user message pair. Pass ``config`` (from :meth:`judge_config`)
        to avoid re-reading the judge files for every sample.

        Returns ``{"judged": True, "category", "ratings": [float|None per turn],
        "judge_prompts": [names], "judgments": [replies], "judge_model"}``; a reply without a
        rating gives None for that turn (counted in ``judge_failures``)."""
        config = config or self.judge_config()
        reference = config.references.get(sample.data["question_id"])
        requests = judge_prompt(sample, completions, config.prompts, reference)
        replies = [generate_fn(request.messages()) for request in requests]
        return {
            "judged": True,
            "category": sample.data["category"],
            "ratings": [parse_judge_rating(reply) for reply in replies],
            "judge_prompts": [request.prompt_name for request in requests],
            "judgments": replies,
            "judge_model": config.model,
        }

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        judged = [s for s in scores if s.get("judged")]
        if not judged:
            return {"accuracy": None, "n": len(scores), "note": NO_JUDGE_NOTE}
        by_category: dict[str, list[float]] = defaultdict(list)
        by_turn: dict[str, list[float]] = defaultdict(list)
        failures = 0
        for s in judged:
            for turn, rating in enumerate(s["ratings"]):
                if rating is None:
                    failures += 1
                    continue
                by_category[s["category"]].append(rating)
                by_turn[str(turn + 1)].append(rating)
        all_ratings = [r for values in by_category.values() for r in values]
        return {
            "accuracy": None,
            "score_mean": _mean(all_ratings),
            "score_by_category": {c: _mean(v) for c, v in sorted(by_category.items())},
            "score_by_turn": {t: _mean(v) for t, v in sorted(by_turn.items())},
            "judge_failures": failures,
            "n": len(scores),
            "n_judged": len(judged),
            "note": JUDGED_NOTE if len(judged) == len(scores) else f"{JUDGED_NOTE}; only {len(judged)} of {len(scores)} samples judged",
        }
