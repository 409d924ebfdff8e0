"""Running model-written SQL on a SQLite database without trusting it.

The queries of one batch (Spider: the gold query and the prediction) run in ONE child
process started by :func:`cllm_bench.sandbox.run_program`, so they get the same OS
isolation as model-written Python (bubblewrap when available; the database is copied in
read-only and the harness's file is never reachable for writing) plus:

* a time limit per query that holds for expensive per-row functions: a progress handler
  checks the clock every :data:`PROGRESS_STEPS` virtual-machine steps, and no single
  step can be long because SQLite's own length limit (``SQLITE_LIMIT_LENGTH``, i.e.
  :data:`MAX_VALUE_BYTES`, via ``Connection.setlimit``) refuses any string or blob
  larger than that (``zeroblob(1e9)``, ``randomblob(1e8)``); the whole child is also
  killed at ``len(queries) * timeout_s`` plus a start-up allowance;
* a memory cap: the child's address space is ``memory_mb`` (RLIMIT_AS) and SQLite's heap
  is capped below it (``PRAGMA hard_heap_limit``), with temporary tables in memory, so
  a huge sort or ``group_concat`` ends as an "out of memory" query error inside the
  child, never as memory of the harness;
* reads only: the database is opened read-only (``mode=ro`` URI, path percent-quoted so
  that ``#``, ``?`` or ``%`` in a folder name cannot change its meaning) and an
  authorizer allows only SELECT, reads, functions and recursive CTEs (no writes, no
  ATTACH, no PRAGMA); one statement per query; at most ``max_rows`` rows.

Rows come back as JSON lines on the child's output (bytes as base64), whose size is
capped by the file-size limit; the harness never unpickles anything from the child.
Under bubblewrap the database file is copied into each child's private file system
(through an open file descriptor, so the sandbox needs no access to its folder): cheap
for Spider's databases (at most a few MB), a cost to keep in mind for large ones.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from cllm_bench.isolation import SANDBOX_TMP, Isolation, detect_isolation
from cllm_bench.sandbox import Limits, result_of, run_program

#: the progress handler runs every this many SQLite virtual-machine steps
PROGRESS_STEPS = 100
#: the largest string or blob a query may build (SQLITE_LIMIT_LENGTH)
MAX_VALUE_BYTES = 10 * 1024 * 1024
#: wall-clock seconds allowed for starting the child, on top of the per-query limits
STARTUP_ALLOWANCE_S = 5.0
#: cap on the child's output (all rows of all queries as JSON)
OUTPUT_MB = 32
#: where the database appears inside the bubblewrap sandbox
_SANDBOX_DB = f"{SANDBOX_TMP}/database.sqlite"
_ROW_MARK = "__cllm_sql_result__ "

# Trusted code run as the sandboxed program; __MARK__ and __SPEC__ (the JSON spec) are
# replaced by Python string literals (repr), so no query text can become code.
_RUNNER = r'''
import base64, json, sqlite3, sys, time

_ALLOWED = frozenset((sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                      getattr(sqlite3, "SQLITE_RECURSIVE", 33)))

def _authorize(action, *_):
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY

def _value(value):
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value

def _run(spec):
    conn = sqlite3.connect(spec["uri"], uri=True)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
    conn.execute("PRAGMA hard_heap_limit = %d" % spec["heap_bytes"])
    conn.execute("PRAGMA temp_store = MEMORY")
    if hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, spec["max_value_bytes"])
    conn.set_authorizer(_authorize)
    max_rows, timeout = spec["max_rows"], spec["timeout_s"]
    for index, sql in enumerate(spec["queries"]):
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), spec["progress_steps"])
        try:
            rows = conn.execute(sql).fetchmany(max_rows + 1)
            if len(rows) > max_rows:
                out = {"error": "query returned more than %d rows" % max_rows}
            else:
                out = {"rows": [[_value(v) for v in row] for row in rows]}
        except sqlite3.OperationalError as err:
            if str(err) == "interrupted" and time.monotonic() > deadline:
                out = {"error": "timeout: query ran longer than %g s" % timeout}
            else:
                out = {"error": str(err)}
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as err:
            out = {"error": "%s: %s" % (type(err).__name__, err)}
        out["index"] = index
        line = json.dumps(out)
        rows = out = None
        sys.stdout.write(__MARK__ + line + "\n")
        sys.stdout.flush()
    conn.close()

_run(json.loads(__SPEC__))
'''


class QueryError(Exception):
    """A query that failed: invalid SQL, a refused operation, a timeout, too many rows,
    too much memory."""


def readonly_uri(path: Path | str) -> str:
    """The ``file:`` URI opening ``path`` read-only; every character that means something
    in a URI (``#``, ``?``, ``%``, spaces, ...) is percent-quoted."""
    return f"file:{quote(str(Path(path).resolve()), safe='/')}?mode=ro"


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


def _failure(reason: str, timeout_s: float, memory_mb: int) -> str:
    if reason == "timeout":
        return f"timeout: query ran longer than {timeout_s:g} s"
    if reason.startswith("memory") or reason.startswith("killed"):
        return f"memory: query needed more than {memory_mb} MB"
    if reason in ("output limit", "file size limit"):
        return f"query result larger than {OUTPUT_MB} MB"
    return f"query runner failed: {reason}"


def run_queries(
    db_path: Path | str,
    queries: Sequence[str],
    timeout_s: float = 5.0,
    *,
    max_rows: int = 100_000,
    memory_mb: int = 1024,
    isolation: Isolation | None = None,
) -> list[list[tuple[Any, ...]] | QueryError]:
    """Run ``queries`` one after another on ``db_path`` in one sandboxed child; one entry
    per query, in order: its rows (tuples of int/float/str/bytes/None), or the
    :class:`QueryError` it failed with. Raises :class:`QueryError` only when the database
    file does not exist. ``timeout_s`` holds per query; the database is never modified.
    When the child dies on a query (memory, output limit, a kill at the deadline), that
    query fails with the reason and the queries after it run in a fresh child.
    """
    path = Path(db_path)
    if not path.is_file():
        raise QueryError(f"database file not found: {path}")
    if not queries:
        return []
    isolation = detect_isolation() if isolation is None else isolation
    results: list[list[tuple[Any, ...]] | QueryError] = []
    while len(results) < len(queries):  # a child that died is restarted after the query it died on
        results += _run_batch(path, list(queries[len(results):]), float(timeout_s), int(max_rows), int(memory_mb), isolation)
    return results


def _run_batch(
    path: Path, queries: list[str], timeout_s: float, max_rows: int, memory_mb: int, isolation: Isolation
) -> list[list[tuple[Any, ...]] | QueryError]:
    """The results of ``queries`` in one child, up to and including the first query that
    got no answer (the child died or was killed on it: that query gets the reason); so the
    list is never empty and shorter than ``queries`` only after such a failure."""
    spec = {
        "uri": readonly_uri(_SANDBOX_DB if isolation.isolated else path),
        "queries": queries,
        "timeout_s": timeout_s,
        "max_rows": max_rows,
        "max_value_bytes": MAX_VALUE_BYTES,
        "heap_bytes": memory_mb * 1024 * 1024 // 2,
        "progress_steps": PROGRESS_STEPS,
    }
    program = _RUNNER.replace("__MARK__", repr(_ROW_MARK)).replace("__SPEC__", repr(json.dumps(spec)))
    limits = Limits(timeout_s=len(queries) * timeout_s + STARTUP_ALLOWANCE_S, memory_mb=memory_mb,
                    file_size_mb=OUTPUT_MB, disk_mb=1)  # fmt: skip
    try:
        run = run_program(program, limits, isolation=isolation, data_files=((path, _SANDBOX_DB),))
    except OSError as err:
        return [QueryError(f"cannot start the SQL sandbox: {err}")] * len(queries)
    found: dict[int, list[tuple[Any, ...]] | QueryError] = {}
    for line in run.output.decode("utf-8", errors="replace").splitlines():
        if not line.startswith(_ROW_MARK):
            continue
        try:
            record = json.loads(line[len(_ROW_MARK):])
        except ValueError:
            continue  # a line cut off by the output limit
        index = record.get("index")
        if not isinstance(index, int) or not 0 <= index < len(queries):
            continue
        if "rows" in record:
            found[index] = [tuple(_decode(v) for v in row) for row in record["rows"]]
        else:
            found[index] = QueryError(str(record.get("error")))
    out: list[list[tuple[Any, ...]] | QueryError] = []
    for index in range(len(queries)):
        if index not in found:
            out.append(QueryError(_failure(result_of(run, limits).reason, timeout_s, memory_mb)))
            break
        out.append(found[index])
    return out


def query_sqlite_readonly(
    db_path: Path | str,
    sql: str,
    timeout_s: float = 5.0,
    max_rows: int = 100_000,
    *,
    memory_mb: int = 1024,
    isolation: Isolation | None = None,
) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement (see :func:`run_queries`); raises :class:`QueryError`."""
    (result,) = run_queries(db_path, [sql], timeout_s, max_rows=max_rows, memory_mb=memory_mb, isolation=isolation)
    if isinstance(result, QueryError):
        raise result
    return result

