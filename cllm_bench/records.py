"""The result records: one ``samples.jsonl`` line per sample (:class:`SampleRecord`) and one
``summary.json`` result per model x decoder x task cell (:class:`CellSummary`).

Each is ONE list of fields (a ``TypedDict``: records stay plain JSON dicts). Everything
else is derived from these declarations, so adding a metric means adding one field here
(and computing it in :mod:`cllm_bench.run_records`):

* ``Required[...]`` — a record without the key cannot be read back (resume, report);
  :data:`SAMPLE_REQUIRED_KEYS`, :data:`CELL_REQUIRED_KEYS`;
* a number type (``int``/``float``, optionally ``| None``) — the report checks the value
  is a number or null when it loads a summary: :data:`CELL_NUMERIC_KEYS`;
* ``Annotated[..., Column(...)]`` — a column of the terminal summary table
  (:mod:`cllm_bench.summary_table`): :data:`SUMMARY_COLUMNS`, :data:`SUMMARY_KEYS`.

Keys not declared ``Required`` may be absent (written only in some runs, e.g. ``prompts``
with ``--log-samples``, ``*_excl_degenerate`` with ``--exclude-degenerate``).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Required, TypedDict, Union, get_args, get_origin, get_type_hints

#: the fields that name a cell: (model, decoder, task)
CELL_KEY: tuple[str, ...] = ("model", "decoder", "task")
CellKey = tuple[str, str, str]  # a cell's (model, decoder, task) values


@dataclass(frozen=True)
class Column:
    """A column of the terminal summary table: header, position (left to right), number
    format, suffix and a factor applied before formatting (100 for a share shown in %;
    an int, so integer values stay integers, as the table always showed them)."""

    header: str
    position: int
    spec: str = ".2f"
    suffix: str = ""
    scale: int = 1


class SampleRecord(TypedDict, total=False):
    """One ``samples.jsonl`` line: everything later metrics need, derived from the traces.

    Per-turn lists have one entry per conversation turn; ``*_repeats`` one per timed repeat.
    """

    model: Required[str]
    decoder: Required[str]  # the decoder's label (name + non-default parameters)
    task: Required[str]
    sample_id: Required[str]
    prompt_hash: str
    prompt_tokens: list[int]  # per turn
    output_ids: Required[list[int]]  # all turns' tokens, concatenated
    completions: Required[list[str]]  # decoded text per turn
    output_text: str  # the last turn's completion
    turn_lengths: list[int]
    generated_tokens: Required[int]
    forwards: int  # target forwards (prefill included)
    draft_forwards: int
    accepted_per_step: list[int]
    stop_reason: list[str]  # per turn: "eos" | "length"
    fast_forwarded: float | None  # Jacobi decoders only
    stationary: int | None
    jacobi_blocks: int | None
    jacobi_iterations: int | None
    block_ff: list[float] | None
    block_stationary: list[int] | None
    block_iterations: list[int] | None
    jacobi_n: int | None
    degenerate: bool  # >= 10 identical consecutive tokens
    decode_s: Required[float]  # median over repeats, all turns
    decode_s_repeats: Required[list[float]]
    ttft_s: float
    ttft_s_repeats: list[float]
    tokens_per_s: float | None
    score: Required[dict[str, Any]]  # the task's score
    category: str | None
    turn_forwards: list[int]
    turn_accepted_per_step: list[list[int]]
    turn_decode_s: list[float]
    turn_ttft_s: list[float]
    acceptance: dict[str, Any]  # cllm_bench.acceptance counts
    match_ar: bool  # absent when no ar record exists for the sample
    first_divergence: int | None
    prompts: list[str]  # --log-samples only
    forward_trace: dict[str, Any]  # per forward: kind, width, context (cllm_bench.forward_trace, for `predict`)
    timing_health: dict[str, Any]


class CellSummary(TypedDict, total=False):
    """One ``summary.json`` result: a model x decoder x task cell over its samples."""

    model: Required[Annotated[str, Column("model", 0)]]
    decoder: Required[Annotated[str, Column("decoder", 2)]]
    task: Required[Annotated[str, Column("task", 1)]]
    n_samples: Required[Annotated[int, Column("n", 3)]]
    accuracy: Annotated[float | None, Column("accuracy", 4, ".1f", "%", 100)]
    task_metrics: dict[str, Any]
    tokens_per_s: Required[Annotated[float | None, Column("tokens/s", 5, ".1f")]]
    tokens_per_s_min: float | None
    tokens_per_s_max: float | None
    speedup: Annotated[float | None, Column("speedup", 6, ".2f", "x")]
    tokens_per_forward: Annotated[float | None, Column("tok/forward", 7)]
    fast_forwarded: Annotated[float | None, Column("fast-fwd", 8)]
    stationary: Annotated[float | None, Column("stationary", 9)]
    stationary_per_block: float | None
    tokens_per_iteration: float | None
    match_ar: Annotated[float | None, Column("match_ar", 10, ".0f", "%", 100)]
    first_divergence_mean: float | None
    ttft_s: Annotated[float | None, Column("TTFT s", 11, ".3f")]
    decode_s_total: float | None
    generated_tokens: int | None
    draft_forwards: int
    peak_memory_mb: float | None
    repeats: int
    lossless: bool
    skipped: dict[str, Any]
    timing_health: dict[str, Any]
    accepted_length_with_bonus: float | None  # cllm_bench.acceptance.acceptance_summary
    accepted_length_draft_only: float | None
    accepted_length_histogram: dict[str, int] | None
    acceptance_per_position: list[float] | None
    acceptance_position_trials: list[int] | None
    fast_forwarded_excl_degenerate: float | None  # --exclude-degenerate only
    stationary_excl_degenerate: float | None
    excluded_degenerate: int
    by_category: dict[str, Any]  # tasks with question categories only
    note: str  # `cllm-bench score`: a cell found only in samples.jsonl (no speed fields)


# ------------------------------------------------------------------ derived key lists
def _hints(record_type: type) -> dict[str, Any]:
    return get_type_hints(record_type, include_extras=True)


def _strip(tp: Any) -> Any:
    """The value type without ``Required``/``Annotated`` wrappers."""
    while get_origin(tp) in (Required, Annotated):
        tp = get_args(tp)[0]
    return tp


def _is_number_type(tp: Any) -> bool:
    tp = _strip(tp)
    members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    numbers = [m for m in members if m is not type(None)]
    return bool(numbers) and all(m in (int, float) for m in numbers)


def _column(tp: Any) -> Column | None:
    while get_origin(tp) is Required:
        tp = get_args(tp)[0]
    if get_origin(tp) is Annotated:
        return next((m for m in tp.__metadata__ if isinstance(m, Column)), None)
    return None


def required_keys(record_type: type) -> tuple[str, ...]:
    """The ``Required`` keys of a record type, in declaration order (read off the type hints:
    with postponed annotations ``__required_keys__`` does not see ``Required``)."""
    return tuple(k for k, tp in _hints(record_type).items() if get_origin(tp) is Required)


def numeric_keys(record_type: type) -> tuple[str, ...]:
    """The keys whose values are numbers (or null), in declaration order."""
    return tuple(k for k, tp in _hints(record_type).items() if _is_number_type(tp))


def summary_columns() -> list[tuple[str, Column]]:
    """(key, column) of every :class:`CellSummary` field shown in the terminal table, left to right."""
    cols = [(k, c) for k, tp in _hints(CellSummary).items() if (c := _column(tp)) is not None]
    return sorted(cols, key=lambda kc: kc[1].position)


#: keys a samples.jsonl line must hold to be resumed from
SAMPLE_REQUIRED_KEYS: tuple[str, ...] = required_keys(SampleRecord)
#: keys a summary.json result must hold to be reported
CELL_REQUIRED_KEYS: tuple[str, ...] = required_keys(CellSummary)
#: summary.json keys whose values must be numbers or null
CELL_NUMERIC_KEYS: tuple[str, ...] = numeric_keys(CellSummary)
#: the terminal summary table's columns: (key, column)
SUMMARY_COLUMNS: list[tuple[str, Column]] = summary_columns()
#: the headline keys every summary.json result holds (the terminal table's columns)
SUMMARY_KEYS: tuple[str, ...] = tuple(k for k, _ in SUMMARY_COLUMNS)

__all__ = [
    "CELL_KEY", "CELL_NUMERIC_KEYS", "CellKey", "CELL_REQUIRED_KEYS", "SAMPLE_REQUIRED_KEYS", "SUMMARY_COLUMNS", "SUMMARY_KEYS",
    "CellSummary", "Column", "SampleRecord", "numeric_keys", "required_keys", "summary_columns",
]  # fmt: skip
