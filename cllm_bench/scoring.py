"""Scoring without a model: completions someone already has -> the task's metrics.

Two entry points (``cllm-bench score``):

* :func:`score_predictions` — a JSON-lines file of ``{"id": ..., "completion": "..."}``
  (or ``"completions": [...]``, one string per turn, for multi-turn tasks), ids as the task
  names its samples (``gsm8k/test/0``, ``HumanEval/0``, ``spider/dev/3``, ``mt_bench/81``,
  ``<task>/<doc index>`` for ``lm_eval:<task>``). Scores them with the task's own
  :meth:`~cllm_bench.tasks.base.Task.score`, aggregates, prints a table and writes
  ``<predictions stem>.scores.json`` (or ``output``).
* :func:`rescore_run` — a finished run folder: the completions in ``samples.jsonl`` are
  scored again (e.g. HumanEval with ``--allow-code-execution`` after a run without it,
  or after a scorer fix) into a new ``summary.rescored-<timestamp>.json`` with the
  structure of ``summary.json``: its provenance, a ``rescored_at`` time, and per
  model x decoder x task its records with ``accuracy`` and ``task_metrics`` recomputed
  and every other field (all speed numbers) copied. ``samples.jsonl`` and
  ``summary.json`` are only read.

Running model-written code (HumanEval, Spider execution, unsafe lm-eval tasks) needs
``TaskOptions.allow_code_execution``, as in ``cllm-bench run``; without it those metrics
are None with a note, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from cllm_bench.records import CELL_KEY, CellKey
from cllm_bench.errors import UserError
from cllm_bench.provenance import now_iso, sandbox_provenance
from cllm_bench.results_io import check_writable_file, read_json, write_json_file
from cllm_bench.task_lookup import build_task
from cllm_bench.tasks.base import Sample, Task, TaskOptions

PREDICTION_FORMAT = '{"id": "<sample id>", "completion": "<text>"} or {"id": ..., "completions": ["<turn 1>", ...]}'
RECORD_FIELDS = (*CELL_KEY, "sample_id", "completions")  # the SampleRecord fields rescoring reads
#: summary fields a rescore recomputes; every other field is copied from summary.json
RESCORED_FIELDS = ("accuracy", "task_metrics")



@dataclass(frozen=True)
class Prediction:
    """One line of a predictions file: a sample id and its completions (one per turn)."""

    id: str
    completions: list[str]
    line: int


# ----------------------------------------------------------------------- tasks
def samples_by_id(task: Task, task_name: str) -> dict[str, Sample]:
    """Every sample of the task (no limit), by id."""
    samples = task.samples(None)
    if not samples:
        raise UserError(f"task {task_name} has no samples (check --data-dir)")
    return {s.id: s for s in samples}


def score_all(task: Task, samples: list[Sample], completions: list[list[str]]) -> list[dict[str, Any]]:
    """Per-sample scores; a task's ``score_batch`` (parallel execution) is used when it has one."""
    batch = getattr(task, "score_batch", None)
    if callable(batch) and samples:
        return list(batch(samples, completions))
    return [task.score(s, c) for s, c in zip(samples, completions, strict=True)]


def _unknown_id(where: str, sample_id: str, task_name: str, known: dict[str, Sample]) -> UserError:
    examples = ", ".join(repr(i) for i in list(known)[:3])
    return UserError(f"{where}: unknown id {sample_id!r} for task {task_name} (ids look like {examples}); "
                     "are these predictions for this task and data split?")  # fmt: skip


def _check_turns(where: str, task: Task, sample: Sample, completions: list[str]) -> None:
    turns = task.n_turns(sample)
    if len(completions) != turns:
        raise UserError(f'{where}: sample {sample.id!r} has {turns} turn(s) but {len(completions)} completion(s); '
                        f'give "completions" with {turns} string(s)')  # fmt: skip


# ----------------------------------------------------------------------- predictions file
def read_predictions(path: Path) -> list[Prediction]:
    """All predictions of a JSON-lines file, in order; UserError naming file and line for
    bad JSON, missing or mistyped fields, and duplicate ids."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"predictions file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"predictions file {path} cannot be read: {err}") from None
    out: list[Prediction] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        pred = parse_prediction(line, f"{path}:{number}", number)
        if pred.id in first_line:
            raise UserError(f"{path}:{number}: duplicate id {pred.id!r} (first on line {first_line[pred.id]})")
        first_line[pred.id] = number
        out.append(pred)
    if not out:
        raise UserError(f"predictions file {path} holds no predictions; one JSON object per line: {PREDICTION_FORMAT}")
    return out


def parse_prediction(line: str, where: str, number: int) -> Prediction:
    """One predictions line -> :class:`Prediction` (``where`` = "file:line" for errors)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg}); each line must be {PREDICTION_FORMAT}") from None
    if not isinstance(obj, dict):
        got = type(obj).__name__
        raise UserError(f"{where}: expected a JSON object, got {got}; each line must be {PREDICTION_FORMAT}")
    sample_id = obj.get("id")
    if isinstance(sample_id, int) and not isinstance(sample_id, bool):
        sample_id = str(sample_id)
    if not isinstance(sample_id, str) or not sample_id:
        raise UserError(f'{where}: missing or empty field "id" (a string); each line must be {PREDICTION_FORMAT}')
    return Prediction(sample_id, _completions_field(obj, where), number)


def _completions_field(obj: dict[str, Any], where: str) -> list[str]:
    has_one, has_many = "completion" in obj, "completions" in obj
    if has_one == has_many:
        problem = "both" if has_one else "neither of"
        raise UserError(f'{where}: has {problem} "completion" and "completions"; give one: {PREDICTION_FORMAT}')
    if has_one:
        if not isinstance(obj["completion"], str):
            raise UserError(f'{where}: "completion" must be a string, got {type(obj["completion"]).__name__}')
        return [obj["completion"]]
    many = obj["completions"]
    if not isinstance(many, list) or not many or not all(isinstance(c, str) for c in many):
        raise UserError(f'{where}: "completions" must be a non-empty list of strings (one per turn)')
    return list(many)


# ----------------------------------------------------------------------- score_predictions
def default_scores_path(predictions: Path) -> Path:
    """``preds.jsonl`` -> ``preds.scores.json`` (same folder)."""
    return predictions.with_name(f"{predictions.stem if predictions.suffix else predictions.name}.scores.json")


def score_predictions(
    task_name: str, predictions: Path, options: TaskOptions, output: Path | None, console: Console,
    *, require_isolation: bool = False,
) -> dict[str, Any]:
    """Score a predictions file with ``task_name``'s scorer; write and return the result.

    Returns (and writes to ``output``, default :func:`default_scores_path`) a dict with
    ``task``, ``predictions``, ``scored_at``, ``n_predictions``, ``n_task_samples``,
    ``options``, ``metrics`` (the task's aggregate; ``accuracy`` always present) and
    ``samples`` (``[{"id", "score"}]`` in file order), and ``sandbox`` (how model-written
    code was isolated, see :func:`cllm_bench.provenance.sandbox_provenance`;
    ``require_isolation`` refuses to run it without OS isolation).
    """
    predictions = Path(predictions)
    out = Path(output) if output is not None else default_scores_path(predictions)
    check_writable_file(out, "--output" if output is not None else "scores file")  # before any scoring
    preds = read_predictions(predictions)
    task = build_task(task_name, options)
    known = samples_by_id(task, task_name)
    samples = []
    for pred in preds:
        where = f"{predictions}:{pred.line}"
        if pred.id not in known:
            raise _unknown_id(where, pred.id, task_name, known)
        _check_turns(where, task, known[pred.id], pred.completions)
        samples.append(known[pred.id])
    sandbox = sandbox_provenance(options.allow_code_execution and task.requires_execution, require_isolation)
    scores = score_all(task, samples, [p.completions for p in preds])
    doc = {
        "task": task_name,
        "predictions": str(predictions),
        "scored_at": now_iso(),
        "n_predictions": len(preds),
        "n_task_samples": len(known),
        "options": options_record(options),
        "sandbox": sandbox,
        "metrics": task.aggregate(scores),
        "samples": [{"id": p.id, "score": s} for p, s in zip(preds, scores)],
    }
    write_json_file(out, doc, "--output" if output is not None else "scores file")
    console.print(metrics_table(f"{task_name}: {len(preds)} of {len(known)} samples scored", doc["metrics"]))
    console.print(f"scores: {out}")
    return doc


def options_record(options: TaskOptions) -> dict[str, Any]:
    """The task options as JSON (recorded next to the scores)."""
    return {
        "data_dir": str(options.data_dir) if options.data_dir is not None else None,
        "prompt_style": options.prompt_style,
        "allow_code_execution": options.allow_code_execution,
        "extra": dict(options.extra),
    }


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    """A two-column table of a task's aggregate metrics (nested values as compact JSON)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, format_value(value))
    return table


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str) if value else "—"
    return str(value)


# ----------------------------------------------------------------------- rescore_run
def rescore_run(run_dir: Path, options: TaskOptions, console: Console, *, require_isolation: bool = False) -> Path:
    """Rescore the completions of a run folder into ``summary.rescored-<timestamp>.json``.

    Task options: the run's own (``data_dir``, ``prompt_style``, ``task_args`` from
    ``run_config.json``), overridden by ``options`` where given (``data_dir`` when not
    None, ``prompt_style`` when not "auto", ``extra`` keys); code execution only with
    ``options.allow_code_execution`` (``rescore.sandbox`` records its isolation;
    ``require_isolation`` refuses to run it without OS isolation). Returns the path of
    the new file.
    """
    run_dir = Path(run_dir)
    samples_path, summary_path = run_dir / "samples.jsonl", run_dir / "summary.json"
    for needed in (samples_path, summary_path):
        if not needed.is_file():
            raise UserError(f"{run_dir} is not a cllm-bench run folder: {needed.name} is missing")
    summary = read_json(summary_path, "run summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("results"), list):
        raise UserError(f'{summary_path} has no "results" list; it is not a cllm-bench summary')
    task_options = run_task_options(options, run_config(run_dir, summary))
    cells = group_records(read_run_records(samples_path, console))
    sandbox = sandbox_provenance(options.allow_code_execution, require_isolation)
    metrics = rescore_cells(cells, task_options, samples_path)
    results = merged_results(summary["results"], metrics, cells, console)
    out = rescored_path(run_dir)
    write_json_file(out, {
        "provenance": summary.get("provenance", {}),
        "rescored_at": now_iso(),
        "rescore": {"source": summary_path.name, "samples": samples_path.name, "options": options_record(task_options),
                    "sandbox": sandbox},
        "results": results,
    }, "rescored summary")  # fmt: skip
    console.print(rescore_table(summary["results"], results, run_dir))  # the caller names the new file
    return out


def run_config(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The run's configuration: ``run_config.json``'s, else the summary provenance's."""
    path = run_dir / "run_config.json"
    if path.is_file():
        saved = read_json(path, "run config")
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            return saved["config"]
    config = (summary.get("provenance") or {}).get("config")
    return config if isinstance(config, dict) else {}


def run_task_options(options: TaskOptions, config: dict[str, Any]) -> TaskOptions:
    """The run's task options with the caller's overrides (see :func:`rescore_run`)."""
    data_dir = options.data_dir
    if data_dir is None and config.get("data_dir"):
        data_dir = Path(str(config["data_dir"])).expanduser()
    style = options.prompt_style if options.prompt_style != "auto" else config.get("prompt_style", "auto")
    extra = {**{str(k): str(v) for k, v in (config.get("task_args") or {}).items()}, **options.extra}
    return TaskOptions(
        data_dir=data_dir, prompt_style=style, allow_code_execution=options.allow_code_execution, extra=extra
    )


def read_run_records(path: Path, console: Console) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every complete line of a run's ``samples.jsonl``, read
    only: an unfinished last line (a crash mid-write) is ignored with a warning, never cut."""
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) < len(raw):
        console.print(f"[yellow]warning[/] {path}: ignoring an unfinished last line (the run was interrupted)")
    out = []
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}:{number}: corrupt line; this file cannot be rescored as it is") from None
        missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
        if missing:
            raise UserError(f"{path}:{number}: record lacks {', '.join(missing)}; is this a cllm-bench samples.jsonl?")
        out.append((number, record))
    if not out:
        raise UserError(f"{path} holds no sample records; nothing to rescore")
    return out


def group_records(records: Iterable[tuple[int, dict[str, Any]]]) -> dict[CellKey, list[tuple[int, dict[str, Any]]]]:
    """Records per (model, decoder, task), file order kept; a repeated sample keeps its last record."""
    cells: dict[CellKey, dict[str, tuple[int, dict[str, Any]]]] = {}
    for number, rec in records:
        key = (str(rec["model"]), str(rec["decoder"]), str(rec["task"]))
        cells.setdefault(key, {})[str(rec["sample_id"])] = (number, rec)
    return {key: list(by_id.values()) for key, by_id in cells.items()}


def rescore_cells(
    cells: dict[CellKey, list[tuple[int, dict[str, Any]]]], options: TaskOptions, samples_path: Path
) -> dict[CellKey, dict[str, Any]]:
    """The task's aggregate per cell, from freshly computed per-sample scores."""
    tasks: dict[str, tuple[Task, dict[str, Sample]]] = {}
    out: dict[CellKey, dict[str, Any]] = {}
    for key, rows in cells.items():
        task_name = key[2]
        if task_name not in tasks:
            task = build_task(task_name, options)
            tasks[task_name] = (task, samples_by_id(task, task_name))
        task, known = tasks[task_name]
        samples, completions = [], []
        for number, rec in rows:
            sample_id = str(rec["sample_id"])
            if sample_id not in known:
                raise _unknown_id(f"{samples_path}:{number}", sample_id, task_name, known)
            samples.append(known[sample_id])
            completions.append([str(c) for c in rec["completions"]])
        out[key] = task.aggregate(score_all(task, samples, completions))
    return out


def merged_results(
    original: list[dict[str, Any]], metrics: dict[CellKey, dict[str, Any]],
    cells: dict[CellKey, list[tuple[int, dict[str, Any]]]], console: Console,
) -> list[dict[str, Any]]:  # fmt: skip
    """summary.json's records with :data:`RESCORED_FIELDS` replaced, in their order; cells
    found only in samples.jsonl (an unfinished run) are appended without speed fields."""
    results, seen = [], set()
    for rec in original:
        key = (str(rec.get("model")), str(rec.get("decoder")), str(rec.get("task")))
        new = dict(rec)
        if key in metrics:
            new["accuracy"] = metrics[key].get("accuracy")
            new["task_metrics"] = metrics[key]
            seen.add(key)
        else:
            cell = " / ".join(key)
            console.print(f"[yellow]warning[/] no samples for {cell} in samples.jsonl: its record is copied as it was")
        results.append(new)
    for key in metrics:
        if key not in seen:
            model, decoder, task = key
            results.append({
                "model": model, "decoder": decoder, "task": task, "n_samples": len(cells[key]),
                "accuracy": metrics[key].get("accuracy"), "task_metrics": metrics[key],
                "note": "cell not in summary.json (unfinished run): speed fields absent",
            })  # fmt: skip
    return results


def rescored_path(run_dir: Path) -> Path:
    """A new ``summary.rescored-<YYYYmmdd-HHMMSS>[-k].json`` in ``run_dir`` (never an existing file)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = run_dir / f"summary.rescored-{stamp}.json", 1
    while path.exists():
        path, k = run_dir / f"summary.rescored-{stamp}-{k}.json", k + 1
    return path


def rescore_table(before: list[dict[str, Any]], after: list[dict[str, Any]], run_dir: Path) -> Table:
    """model / decoder / task / n / accuracy in summary.json / accuracy now."""
    old = {(r.get("model"), r.get("decoder"), r.get("task")): r.get("accuracy") for r in before}
    table = Table(title=f"rescored {run_dir}")
    for name, justify in (("model", "left"), ("task", "left"), ("decoder", "left"), ("n", "right"),
                          ("accuracy (summary.json)", "right"), ("accuracy (rescored)", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rec in after:
        key = (rec.get("model"), rec.get("decoder"), rec.get("task"))
        table.add_row(
            str(rec.get("model")), str(rec.get("task")), str(rec.get("decoder")), str(rec.get("n_samples", "")),
            format_value(old.get(key)), format_value(rec.get("accuracy")),
        )  # fmt: skip
    return table
