"""Spec-Bench's answer format: write a run's samples in it, read it back, score it its way.

Spec-Bench (hemingkx/Spec-Bench, ``evaluation/eval.py``) writes one JSON line per question:

``{"question_id", "category", "answer_id", "model_id", "choices": [{"index", "turns",
"decoding_steps", "new_tokens", "wall_time", "accept_lengths"}], "tstamp"}``

with, per choice (we write one, ``index`` 0, greedy):

* ``turns``: the answer text per turn;
* ``decoding_steps``: target-model forwards per turn (its ``step``: the prefill counts,
  since it yields the first token; ``ar`` = new_tokens);
* ``new_tokens``: generated tokens per turn (ours: up to and including the first EOS);
* ``wall_time``: seconds per turn, prefill + decode (its timer wraps the whole generate
  call; ours = the turn's median TTFT + median decode time over timed repeats);
* ``accept_lengths``: tokens made final by each target forward, all turns concatenated,
  prefill first — the bonus token included (``ar``: a list of 1s, as its baseline writes).

``evaluation/speed.py`` then reads a method file and the ``ar`` baseline file and reports,
per subtask (:mod:`cllm_bench.categories`): mean accepted tokens = mean of all
``accept_lengths``; tokens/s = mean over questions of sum(new_tokens)/sum(wall_time);
speedup = that ÷ the baseline's (it re-tokenizes the baseline's text to count its tokens;
:func:`spec_bench_speed` uses ``new_tokens`` for both).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cllm_bench.categories import OVERALL, group_order, spec_bench_group
from cllm_bench.errors import DataError, UserError

ANSWER_FIELDS = ("question_id", "category", "answer_id", "model_id", "choices", "tstamp")
CHOICE_FIELDS = ("index", "turns", "decoding_steps", "new_tokens", "wall_time", "accept_lengths")


@dataclass(frozen=True)
class SpecBenchChoice:
    """One generation of a question; every list has one entry per turn except
    ``accept_lengths`` (one per target forward, all turns)."""

    index: int
    turns: list[str]
    decoding_steps: list[int]
    new_tokens: list[int]
    wall_time: list[float]
    accept_lengths: list[int]


@dataclass(frozen=True)
class SpecBenchAnswer:
    """One line of a Spec-Bench answer file."""

    question_id: int | str
    category: str
    answer_id: str
    model_id: str
    choices: list[SpecBenchChoice]
    tstamp: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- from our records
def model_id(model: str, decoder: str) -> str:
    """A file-name-safe Spec-Bench ``model_id``: ``<model folder name>-<decoder label>``."""
    name = Path(model.rstrip("/")).name.replace(".gguf", "")
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{name}-{decoder}")


def question_id(sample_id: str) -> int | str:
    """``spec_bench/81`` -> 81; ids that are not ``task/<int>`` stay strings."""
    tail = sample_id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else sample_id


def _per_turn(record: Mapping[str, Any], key: str, single: Any) -> list[Any]:
    if key in record:
        return list(record[key])
    if len(record.get("turn_lengths", [0])) == 1:
        return [single]
    raise UserError(
        f"sample {record.get('sample_id')} ({record.get('decoder')}) has {len(record['turn_lengths'])} turns but no "
        f"{key}: the run predates per-turn records; rerun it with this version to export it"
    )


def answer_from_record(record: Mapping[str, Any], tstamp: float) -> SpecBenchAnswer:
    """The Spec-Bench answer line of one samples.jsonl record (see the module docstring)."""
    decode = _per_turn(record, "turn_decode_s", record["decode_s"])
    ttft = _per_turn(record, "turn_ttft_s", record["ttft_s"])
    forwards = _per_turn(record, "turn_forwards", record["forwards"])
    accepted = _per_turn(record, "turn_accepted_per_step", record["accepted_per_step"])
    choice = SpecBenchChoice(
        index=0,
        turns=list(record["completions"]),
        decoding_steps=[int(f) for f in forwards],
        new_tokens=[int(n) for n in record["turn_lengths"]],
        wall_time=[float(a) + float(b) for a, b in zip(ttft, decode)],
        accept_lengths=[int(a) for turn in accepted for a in turn],
    )
    mid = model_id(str(record["model"]), str(record["decoder"]))
    answer_id = hashlib.sha256(f"{mid}/{record['sample_id']}".encode()).hexdigest()[:22]
    category = record.get("category") or str(record["task"])
    return SpecBenchAnswer(question_id(str(record["sample_id"])), str(category), answer_id, mid, [choice], tstamp)


def export_run(run_dir: Path, output: Path | None = None, decoder: str | None = None) -> list[Path]:
    """Write one Spec-Bench answer file per (model, decoder, task) cell of a run.

    ``output``: a folder (default ``RUN_DIR/spec-bench/``) receiving ``<model_id>.jsonl``
    files (``<model_id>.<task>.jsonl`` when the run has several tasks); with ``decoder``
    (one decoder label) it may instead name the ``.jsonl`` file itself. Lines are sorted by
    question id, as Spec-Bench's ``reorg_answer_file`` leaves them. Returns the files written.
    """
    from cllm_bench.report.model import load_run
    from cllm_bench.results_io import write_jsonl_atomic

    run = load_run(Path(run_dir))
    tstamp = _run_timestamp(run.provenance)
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in run.samples:
        cells[(str(s["model"]), str(s["decoder"]), str(s["task"]))].append(s)
    if decoder is not None:
        known = sorted({k[1] for k in cells})
        cells = {k: v for k, v in cells.items() if k[1] == decoder}
        if not cells:
            raise UserError(f"{run_dir}: no samples of decoder {decoder!r}; the run has {', '.join(known)}")
    if not cells:
        raise UserError(f"{run_dir}: samples.jsonl holds no samples to export")
    single_file = output is not None and output.suffix == ".jsonl"
    if single_file and len(cells) > 1:
        raise UserError(f"{output}: {len(cells)} cells to export (several models or tasks); pass a folder as --output")
    folder = output if (output is not None and not single_file) else Path(run_dir) / "spec-bench"
    several_tasks = len({k[2] for k in cells}) > 1
    written = []
    for (model, dec, task), records in cells.items():
        answers = sorted((answer_from_record(r, tstamp) for r in records), key=lambda a: str(a.question_id).zfill(12))
        if single_file:
            path = output
        else:
            stem = model_id(model, dec) + (f".{task}" if several_tasks else "")
            path = folder / f"{stem}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(path, [a.to_json() for a in answers])
        written.append(path)
    return written


def _run_timestamp(provenance: Mapping[str, Any]) -> float:
    from datetime import datetime

    for key in ("end_time", "start_time"):
        value = provenance.get(key)
        if value:
            try:
                return datetime.fromisoformat(str(value)).timestamp()
            except ValueError:
                continue
    return 0.0


# ---------------------------------------------------------------- reading the format
def _need(obj: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [f for f in fields if f not in obj]
    if missing:
        raise DataError(f"{where}: lacks {', '.join(missing)}; not a Spec-Bench answer line")


def _int_list(value: Any, where: str, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise DataError(f"{where}: {name} must be a list of integers")
    return list(value)


def read_answers(path: Path) -> list[SpecBenchAnswer]:
    """Every answer line of a Spec-Bench answer file, validated; a bad line raises
    DataError naming the file and line. Per choice, ``turns``, ``decoding_steps``,
    ``new_tokens`` and ``wall_time`` must have one entry per turn."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err})") from None
    answers = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        _need(obj, ANSWER_FIELDS[:2] + ("model_id", "choices"), where)
        if not isinstance(obj["choices"], list) or not obj["choices"]:
            raise DataError(f"{where}: choices must be a non-empty list")
        choices = []
        for c in obj["choices"]:
            if not isinstance(c, dict):
                raise DataError(f"{where}: a choice must be an object")
            _need(c, ("turns", "new_tokens", "wall_time", "accept_lengths"), where)
            turns = c["turns"]
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise DataError(f"{where}: turns must be a list of strings")
            new_tokens = _int_list(c["new_tokens"], where, "new_tokens")
            steps = _int_list(c.get("decoding_steps", []), where, "decoding_steps")
            wall = c["wall_time"]
            if not isinstance(wall, list) or not all(isinstance(x, (int, float)) for x in wall):
                raise DataError(f"{where}: wall_time must be a list of numbers")
            per_turn = {"new_tokens": len(new_tokens), "wall_time": len(wall)} | ({"decoding_steps": len(steps)} if steps else {})
            bad = [k for k, n in per_turn.items() if n != len(turns)]
            if bad:
                raise DataError(f"{where}: {', '.join(bad)} must have one entry per turn ({len(turns)})")
            choices.append(SpecBenchChoice(int(c.get("index", 0)), list(turns), steps, new_tokens, [float(x) for x in wall],
                                           _int_list(c["accept_lengths"], where, "accept_lengths")))  # fmt: skip
        answers.append(SpecBenchAnswer(obj["question_id"], str(obj["category"]), str(obj.get("answer_id", "")),
                                       str(obj["model_id"]), choices, float(obj.get("tstamp", 0.0))))  # fmt: skip
    return answers


def spec_bench_speed(answers: Sequence[SpecBenchAnswer], baseline: Sequence[SpecBenchAnswer]) -> dict[str, dict[str, Any]]:
    """Spec-Bench's ``speed.py`` per subtask (and "overall"), first choice of each answer:
    ``mean_accepted_tokens`` (mean of all accept_lengths), ``tokens_per_s`` (mean over
    questions of sum(new_tokens)/sum(wall_time)), the baseline's, and ``speedup``."""

    def speeds(items: Sequence[SpecBenchAnswer]) -> list[float]:
        return [sum(a.choices[0].new_tokens) / sum(a.choices[0].wall_time) for a in items if sum(a.choices[0].wall_time) > 0]

    out: dict[str, dict[str, Any]] = {}
    groups = {spec_bench_group(a.category) for a in answers}
    for group in group_order(groups):
        mine = [a for a in answers if group == OVERALL or spec_bench_group(a.category) == group]
        base = [a for a in baseline if group == OVERALL or spec_bench_group(a.category) == group]
        lengths = [x for a in mine for x in a.choices[0].accept_lengths]
        tps, base_tps = speeds(mine), speeds(base)
        mean_tps = statistics.fmean(tps) if tps else None
        mean_base = statistics.fmean(base_tps) if base_tps else None
        out[group] = {
            "n_questions": len(mine),
            "mean_accepted_tokens": statistics.fmean(lengths) if lengths else None,
            "tokens_per_s": mean_tps,
            "baseline_tokens_per_s": mean_base,
            "speedup": mean_tps / mean_base if (mean_tps and mean_base) else None,
        }
    return out
