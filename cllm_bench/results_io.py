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


def read_jsonl_repairing(path: Path) -> list[dict[str, Any]]:
    """All complete records of ``path``. Every record is written as one ``line + "\\n"``, so
    text after the last newline is a partial write from a crash: it is cut off the file.
    A corrupt complete line is an error naming the line."""
    records = read_complete_jsonl(path)
    if path.exists():
        size = path.stat().st_size
        complete = path.read_bytes().rfind(b"\n") + 1
        if complete < size:
            with open(path, "r+b") as fh:
                fh.truncate(complete)
    return records


def read_complete_jsonl(path: Path) -> list[dict[str, Any]]:
    """Like :func:`read_jsonl_repairing` but read-only: a partial last line is ignored, not cut
    (for logs another process owns)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    out = []
    for number, line in enumerate(raw[: raw.rfind(b"\n") + 1].split(b"\n")[:-1], start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path} line {number} is corrupt; delete that line (or the run folder) and rerun") from None
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
