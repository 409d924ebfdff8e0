"""Spec-Bench's category grouping (pure functions, no I/O).

Spec-Bench (hemingkx/Spec-Bench, ``evaluation/speed.py``) reports speed per *subtask*:
the eight MT-bench categories together as one ("mt_bench", shown as "Multi-turn
Conversation"), then translation, summarization, qa, math_reasoning and rag, and
"overall" over every question. :func:`spec_bench_group` maps a question's category to
its subtask; the mapping also groups ``mt_bench``'s own eight categories.
"""

from __future__ import annotations

from typing import Iterable

#: the eight MT-bench categories (speed.py's ``mt_bench_list``)
MT_BENCH_CATEGORIES: tuple[str, ...] = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
)  # fmt: skip
#: Spec-Bench's subtasks in its report order (``get_single_speedup``), "overall" last
SPEC_BENCH_GROUPS: tuple[str, ...] = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
OVERALL = "overall"
#: the column titles of Spec-Bench's leaderboard
GROUP_LABELS: dict[str, str] = {
    "mt_bench": "multi-turn conversation",
    "translation": "translation",
    "summarization": "summarization",
    "qa": "question answering",
    "math_reasoning": "mathematical reasoning",
    "rag": "retrieval-aug. generation",
    OVERALL: "overall",
}


def spec_bench_group(category: str) -> str:
    """The Spec-Bench subtask of a question category: an MT-bench category -> "mt_bench",
    any other category is its own group (unknown categories keep their name)."""
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def group_order(groups: Iterable[str]) -> list[str]:
    """Groups in Spec-Bench's order (unknown ones after, alphabetically), "overall" last."""
    present = set(groups) - {OVERALL}
    known = [g for g in SPEC_BENCH_GROUPS if g in present]
    return known + sorted(present - set(SPEC_BENCH_GROUPS)) + [OVERALL]
