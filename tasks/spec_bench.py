"""Spec-Bench: 480 questions in six kinds of work, a speed benchmark for fast decoding.

Data: ``<data_dir>/spec_bench/question.jsonl`` (hemingkx/Spec-Bench ``data/spec_bench``,
Apache-2.0): per line ``question_id``, ``category``, ``turns`` (1 or 2 user turns; some
lines also carry ``reference``). 80 MT-bench questions (8 categories x 10, two turns) +
80 each of translation, summarization, qa, math_reasoning and rag (one turn).

Generation is MT-bench's (:class:`~cllm_bench.tasks.mt_bench.MultiTurnChat`): chat
prompts, and turn 2 follows ``ar``'s own turn-1 answer so every decoder continues the
same conversation. Every sample keeps its ``category`` (in ``Sample.data`` and in the
score), and the runner groups results Spec-Bench's way (:mod:`cllm_bench.categories`).

Spec-Bench measures speed only: ``score`` records the category and the aggregate reports
``accuracy`` None with the reason, never 0.

``--task-args``:
  * ``categories=a,b``: keep these question categories; a Spec-Bench group name selects
    its categories (``mt_bench`` = the eight MT-bench ones);
  * ``per_category=N``: at most N questions per Spec-Bench group (mt_bench, translation,
    ...). Inside the mt_bench group the eight categories take turns (writing 1, roleplay
    1, ..., writing 2, ...) so a small N still spans them; otherwise file order.
Selected questions keep file order; ``--limit`` then takes the first ones.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from cllm_bench.categories import MT_BENCH_CATEGORIES, SPEC_BENCH_GROUPS, spec_bench_group
from cllm_bench.errors import DataError, UserError
from cllm_bench.registry import register_task
from cllm_bench.tasks.base import Sample, TaskArg
from cllm_bench.tasks.data_files import data_file, read_jsonl
from cllm_bench.tasks.mt_bench import MultiTurnChat

QUESTIONS_FILE = "spec_bench/question.jsonl"
NOT_APPLICABLE_NOTE = "Spec-Bench is a speed benchmark: accuracy is not applicable (see speedup and tokens/s)"
TASK_ARGS = ("categories", "per_category")


def load_questions(path: Path) -> list[dict[str, Any]]:
    """The question records of ``path``, validated: each needs ``question_id``, a string
    ``category`` and ``turns`` (a non-empty list of strings). A bad line raises DataError
    naming the file and its line number."""
    records = read_jsonl(path, required=("question_id", "category", "turns"))
    with path.open(encoding="utf-8") as handle:
        line_numbers = [i for i, line in enumerate(handle, start=1) if line.strip()]
    for lineno, record in zip(line_numbers, records):
        turns, category = record["turns"], record["category"]
        if not isinstance(category, str) or not category:
            raise DataError(f"{path}:{lineno}: category must be a non-empty string, got {category!r}")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{path}:{lineno}: turns must be a non-empty list of strings, got {turns!r}")
    return records


def parse_categories(raw: str | None, known: set[str]) -> set[str] | None:
    """The categories named by ``categories=...`` (group names expanded); None = all."""
    if raw is None:
        return None
    chosen: set[str] = set()
    for name in (part.strip() for part in raw.replace(";", ",").split(",")):
        if not name:
            continue
        if name == "mt_bench":
            chosen |= set(MT_BENCH_CATEGORIES)
        elif name in known:
            chosen.add(name)
        else:
            valid = ", ".join(sorted(known | set(SPEC_BENCH_GROUPS)))
            raise UserError(f"spec_bench: unknown category {name!r} in --task-args categories=; known: {valid}")
    if not chosen:
        raise UserError("spec_bench: --task-args categories= names no category")
    return chosen


def per_category_option(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"spec_bench: --task-args per_category must be a positive integer, got {raw!r}")
    return value


def select(records: list[dict[str, Any]], categories: set[str] | None, per_category: int | None) -> list[dict[str, Any]]:
    """The chosen records in file order (see the module docstring for the rules)."""
    kept = [r for r in records if categories is None or r["category"] in categories]
    if per_category is None:
        return kept
    by_group: dict[str, list[tuple[int, int]]] = defaultdict(list)  # group -> (rank in category, file index)
    rank: dict[str, int] = defaultdict(int)
    for index, r in enumerate(kept):
        by_group[spec_bench_group(r["category"])].append((rank[r["category"]], index))
        rank[r["category"]] += 1
    chosen = {index for members in by_group.values() for _, index in sorted(members)[:per_category]}
    return [r for i, r in enumerate(kept) if i in chosen]


@register_task("spec_bench")
class SpecBench(MultiTurnChat):
    """Spec-Bench: 480 questions (multi-turn, translation, summarization, qa, math, RAG); speed only."""

    description = "Spec-Bench: 480 questions in 6 kinds of work (13 categories), speed only; per-category speedups"
    requires_execution = False
    default_max_new_tokens = 1024  # Spec-Bench's --max-new-tokens default
    accepted_args = {"categories": TaskArg("text", "categories or groups, comma list"),
                     "per_category": TaskArg("integer", "questions per category group (>= 1)")}  # fmt: skip

    def samples(self, limit: int | None = None) -> list[Sample]:
        unknown = sorted(set(self.options.extra) - set(TASK_ARGS))
        if unknown:
            raise UserError(f"spec_bench: unknown --task-args {', '.join(unknown)}; known: {', '.join(TASK_ARGS)}")
        path = data_file(self.options.data_dir, QUESTIONS_FILE, "spec_bench")
        records = load_questions(path)
        categories = parse_categories(self.options.extra.get("categories"), {r["category"] for r in records})
        records = select(records, categories, per_category_option(self.options.extra.get("per_category")))
        if limit is not None:
            records = records[:limit]
        return [
            Sample(
                id=f"spec_bench/{r['question_id']}",
                data={"question_id": int(r["question_id"]), "category": r["category"], "turns": list(r["turns"])},
            )
            for r in records
        ]

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        return {"category": sample.data["category"], "group": spec_bench_group(sample.data["category"]),
                "turns_answered": len(completions)}  # fmt: skip

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for s in scores:
            counts[s["group"]] += 1
        return {"accuracy": None, "n": len(scores), "n_by_group": dict(sorted(counts.items())), "note": NOT_APPLICABLE_NOTE}
