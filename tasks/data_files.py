"""Helpers shared by the built-in tasks: finding and reading data files, task options,
and small text helpers for model answers (code fences, stop strings).

Every task reads its files through these helpers so that a missing or corrupt file
always produces the same kind of message: a :class:`~cllm_bench.errors.DataError`
naming the file, the exact path that was expected, and how to fix it.

Layout under ``--data-dir`` (as in ``shared/data``)::

    gsm8k/test.jsonl, gsm8k/train.jsonl
    spider/dev.json, spider/database/<db_id>/<db_id>.sqlite
    mt_bench/question.jsonl, mt_bench/judge_prompts.jsonl,
    mt_bench/reference_answer/gpt-4.jsonl
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from cllm_bench.errors import DataError, UserError

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def data_file(data_dir: Path | str | None, relpath: str, task: str) -> Path:
    """The path ``data_dir / relpath``, checked to be an existing file.

    Raises DataError when ``data_dir`` is None, is not a directory, or lacks the file;
    the message names the task, the expected path and the ``--data-dir`` fix.
    """
    fix = f"pass --data-dir pointing to a folder with {relpath} (the layout of shared/data)"
    if data_dir is None:
        raise DataError(f"{task}: no data directory given; {fix}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{task}: data directory {root} does not exist; {fix}")
    path = root / relpath
    if not path.is_file():
        raise DataError(f"{task}: data file {relpath} is missing: expected {path}; {fix}")
    return path


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All JSON objects of a JSON-lines file (``.gz`` allowed), in file order.

    Blank lines are skipped. A line that is not valid JSON, not a JSON object, or an
    object lacking one of the ``required`` fields raises DataError naming the file and
    its 1-based line number.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: corrupt JSON line ({err.msg}); re-download the file") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                require_fields(record, required, f"{path}:{lineno}")
                records.append(record)
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{path}: cannot be read ({err}); re-download the file") from None
    return records


def read_json(path: Path) -> Any:
    """The parsed content of a JSON file; DataError (with line number) when corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err}); re-download the file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: corrupt JSON ({err.msg}); re-download the file") from None


def require_fields(record: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Raise DataError when ``record`` lacks one of ``fields``; ``where`` locates it
    ("file:line" or "file record i")."""
    missing = [name for name in fields if name not in record]
    if missing:
        raise DataError(f"{where}: record lacks field(s) {', '.join(missing)}; is this the right file?")


def float_option(extra: dict[str, str], key: str, default: float, task: str) -> float:
    """A positive number from ``--task-args`` (``options.extra``), or ``default`` when absent."""
    raw = extra.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise UserError(f"{task}: task argument {key}={raw!r} must be a positive number")
    return value


def choice_option(extra: dict[str, str], key: str, default: str, choices: tuple[str, ...], task: str) -> str:
    """One of ``choices`` from ``--task-args`` (``options.extra``), or ``default`` when absent."""
    value = extra.get(key, default)
    if value not in choices:
        raise UserError(f"{task}: task argument {key}={value!r} must be one of: {', '.join(choices)}")
    return value


def fenced_blocks(text: str, languages: frozenset[str]) -> list[str]:
    """Contents of the Markdown code blocks in ``text`` whose language tag (lower-cased;
    "" when unlabelled) is in ``languages``, in order. An unclosed final fence (a
    truncated answer) runs to the end of the text."""
    return [body for lang, body in _FENCE.findall(text) if lang.lower() in languages]


def cut_at_first(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any of ``stops``."""
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=len(text))
    return text[:cut]
