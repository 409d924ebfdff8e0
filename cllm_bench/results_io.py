"""Result files that survive a crash: atomic JSON writes and an append-only JSONL log.

Invariants:
  * ``summary.json`` and ``run_config.json`` are replaced atomically (temp file +
    ``os.replace``): a reader sees the old or the new file, never half of one;
  * ``samples.jsonl`` only grows by whole lines (each line written with one ``write``
    and flushed + fsynced); a crash can at worst leave one partial last line, which
    :func:`read_jsonl_repairing` drops (and truncates away) before a resumed run appends.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cllm_bench.errors import UserError


def replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync it, then ``os.replace`` it over
    ``path``: a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable_file(path: Path, flag: str) -> None:
    """Raise :class:`UserError` unless ``path`` can be written as a file: not a folder, and its
    folder (or the nearest existing one above it, where it will be created) writable. Reads only."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'scores.json'}")
    base = next((p for p in path.parents if p.exists()), Path("."))
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, so {path} cannot be created; pass another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {base} is not writable by this user; pass a writable path")


def write_json_file(path: Path, data: Any, flag: str) -> None:
    """:func:`write_json_atomic` to a user-named ``path``; an ``OSError`` (read-only file
    system, no space) becomes a :class:`UserError` naming ``flag``. Fully finite numbers only
    (``allow_nan=False``): a NaN would make the file unreadable as strict JSON."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {flag} {path}: {exc.strerror or exc}; pass a writable path") from None
    except ValueError as exc:
        raise UserError(f"cannot write {path}: {exc} (a NaN or infinite value in the results)") from None


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None


def read_jsonl_repairing(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All complete records of ``path``. Every record is written as one ``line + "\\n"``, so
    text after the last newline is a partial write from a crash: it is cut off the file.
    A corrupt complete line, or one that is not a record (see :func:`read_complete_jsonl`),
    is an error naming the line."""
    records = read_complete_jsonl(path, required)
    if path.exists():
        size = path.stat().st_size
        complete = path.read_bytes().rfind(b"\n") + 1
        if complete < size:
            with open(path, "r+b") as fh:
                fh.truncate(complete)
    return records


def read_complete_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Like :func:`read_jsonl_repairing` but read-only: a partial last line is ignored, not cut
    (for logs another process owns). Every line must be a JSON object holding the
    ``required`` keys; any other line is a :class:`UserError` naming file and line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    out = []
    fix = "delete that line (or the run folder) and rerun"
    for number, line in enumerate(raw[: raw.rfind(b"\n") + 1].split(b"\n")[:-1], start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"{path} line {number} is corrupt; {fix}") from None
            if not isinstance(record, dict):
                kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(record), "a number or null")
                raise UserError(f"{path} line {number} is valid JSON but not a record ({kind}, not an object); {fix}")
            missing = [key for key in required if key not in record]
            if missing:
                raise UserError(f"{path} line {number} is not a sample record (no {', '.join(missing)}); {fix}")
            out.append(record)
    return out


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    replace_atomically(path, "".join(json.dumps(record, default=str) + "\n" for record in records))


class JsonlAppender:
    """Appends one record per line, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path} line {number} is not valid JSON") from None
