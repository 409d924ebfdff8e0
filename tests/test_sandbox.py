"""The sandbox runs model-written code in a separate, limited process and never hangs or
crashes the caller; SQL runs read-only with a time limit."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from cllm_bench.sandbox import (
    ExecutionResult,
    QueryError,
    classify,
    query_sqlite_readonly,
    run_python,
    run_python_many,
)

# generous: process start-up on a loaded 2-core machine
MARGIN_S = 3.0


def test_passing_program_reports_passed_and_its_output():
    result = run_python("print('hello from the sandbox')\nassert 1 + 1 == 2\n")
    assert isinstance(result, ExecutionResult)
    assert result.passed is True
    assert result.reason == "passed"
    assert "hello from the sandbox" in result.stdout_tail


def test_assertion_failure_fails_with_the_exception_in_the_reason():
    result = run_python("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n")
    assert result.passed is False
    assert result.reason == "error: AssertionError: f is wrong"
    assert "AssertionError" in result.stdout_tail


def test_syntax_error_and_early_exit_are_failures():
    assert run_python("def f(:\n    pass\n").reason.startswith("error: SyntaxError")
    # a program must not skip its own tests by exiting with status 0
    early_exit = run_python("import sys\nsys.exit(0)\nassert False\n")
    assert early_exit.passed is False
    assert early_exit.reason.startswith("error: SystemExit")


def test_infinite_loop_times_out_within_the_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert result.passed is False
    assert result.reason == "timeout"
    assert elapsed < 1.0 + MARGIN_S


def test_sleeping_program_is_killed_at_the_wall_clock_limit():
    # a sleeper uses no CPU, so only the wall-clock timeout can stop it
    start = time.monotonic()
    result = run_python("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert result.reason == "timeout"
    assert time.monotonic() - start < 1.0 + MARGIN_S


def test_fork_bomb_is_stopped():
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    os.fork()\n", timeout_s=3.0)
    assert result.passed is False
    assert "fork" in result.reason or result.reason == "timeout"
    assert time.monotonic() - start < 3.0 + MARGIN_S


def test_process_creation_is_refused():
    result = run_python("import subprocess\nsubprocess.run(['true'])\n")
    assert result.passed is False
    assert "subprocess.Popen is not allowed" in result.reason


def test_resource_limits_are_set_in_the_child():
    program = (
        "import resource\n"
        "print('AS', resource.getrlimit(resource.RLIMIT_AS)[0])\n"
        "print('CPU', resource.getrlimit(resource.RLIMIT_CPU)[0])\n"
        "print('FSIZE', resource.getrlimit(resource.RLIMIT_FSIZE)[0])\n"
        "print('NPROC', resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
    )
    result = run_python(program, timeout_s=5.0, memory_mb=512)
    assert result.passed, result.stdout_tail
    values = dict(line.split() for line in result.stdout_tail.splitlines())
    assert int(values["AS"]) == 512 * 1024 * 1024
    assert int(values["CPU"]) == 6  # ceil(timeout) + 1
    assert int(values["FSIZE"]) == 16 * 1024 * 1024
    assert int(values["NPROC"]) == 1


def test_memory_hog_fails_with_memory_reason():
    result = run_python("x = bytearray(4 * 1024 ** 3)\nprint(len(x))\n", memory_mb=1024)
    assert result.passed is False
    assert result.reason == "memory"


def test_gradual_memory_growth_fails_with_memory_reason():
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    result = run_python(program, timeout_s=10.0, memory_mb=512)
    assert result.reason == "memory"


@pytest.mark.parametrize(
    "program",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)\n",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.connect(('1.1.1.1', 80))\n",
        "import _socket\n_socket.socket().connect(('1.1.1.1', 80))\n",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n",
    ],
)
def test_network_access_fails(program):
    result = run_python(program, timeout_s=5.0)
    assert result.passed is False
    assert result.reason != "timeout"
    assert "network access is disabled" in result.stdout_tail or "not allowed" in result.reason


def test_files_are_written_only_into_the_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "escape.txt"
    program = (
        "import os\n"
        "with open('out.txt', 'w') as f:\n"
        "    f.write('inside')\n"
        "assert open('out.txt').read() == 'inside'\n"
        "print('CWD', os.getcwd())\n"
        "try:\n"
        f"    open({str(outside)!r}, 'w').write('escaped')\n"
        "    print('ESCAPED')\n"
        "except PermissionError:\n"
        "    print('BLOCKED')\n"
        "try:\n"
        f"    os.remove({str(tmp_path / 'keep.txt')!r})\n"
        "except PermissionError:\n"
        "    print('REMOVE BLOCKED')\n"
    )
    (tmp_path / "keep.txt").write_text("keep")
    result = run_python(program)
    assert result.passed, result.stdout_tail
    assert "BLOCKED" in result.stdout_tail and "ESCAPED" not in result.stdout_tail
    assert "REMOVE BLOCKED" in result.stdout_tail
    assert not outside.exists()
    assert (tmp_path / "keep.txt").read_text() == "keep"
    assert not (tmp_path / "out.txt").exists()  # not in the caller's working directory
    workdir = Path(result.stdout_tail.split("CWD ")[1].split()[0])
    assert workdir != tmp_path
    assert not workdir.exists()  # the temporary directory is removed afterwards


def test_output_flood_is_capped():
    result = run_python("while True:\n    print('x' * 1000)\n", timeout_s=10.0)
    assert result.passed is False
    assert result.reason == "output limit"
    assert len(result.stdout_tail) <= 5000


def test_run_python_many_keeps_order_and_runs_in_parallel():
    programs = [f"import time\ntime.sleep(0.5)\nprint({i})\n" for i in range(4)]
    start = time.monotonic()
    results = run_python_many(programs, timeout_s=5.0, max_workers=4)
    elapsed = time.monotonic() - start
    assert [r.stdout_tail.strip() for r in results] == ["0", "1", "2", "3"]
    assert all(r.passed for r in results)
    assert elapsed < 4 * 0.5  # serial would take at least 2 s
    assert run_python_many([]) == []


def test_classify_maps_exit_statuses_to_reasons():
    assert classify(0, False, "ok\n") == (True, "passed", "ok")
    assert classify(-9, True, "")[1] == "timeout"
    assert classify(-int(signal.SIGXCPU), False, "")[1] == "timeout"
    assert classify(-int(signal.SIGSEGV), False, "")[1] == "crashed: SIGSEGV"
    assert classify(1, False, "Fatal Python error: MemoryError")[1] == "memory"
    assert classify(2, False, "")[1] == "error: exit status 2"


# --- SQL -------------------------------------------------------------------------------

@pytest.fixture()
def small_db(tmp_path: Path) -> Path:
    path = tmp_path / "small.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",), ("c",)])
    conn.commit()
    conn.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_readonly_query_returns_rows(small_db):
    assert query_sqlite_readonly(small_db, "SELECT name FROM t ORDER BY id") == [("a",), ("b",), ("c",)]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t",
        "DROP TABLE t",
        "UPDATE t SET name = 'x'",
        "INSERT INTO t (name) VALUES ('d')",
        "ATTACH DATABASE 'other.sqlite' AS other",
        "PRAGMA writable_schema = 1",
        "SELECT 1; DELETE FROM t",
    ],
)
def test_writing_queries_fail_and_leave_the_database_untouched(small_db, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _digest(small_db)
    with pytest.raises(QueryError):
        query_sqlite_readonly(small_db, sql)
    assert _digest(small_db) == before
    assert not (tmp_path / "other.sqlite").exists()


def test_endless_query_is_interrupted_at_the_time_limit(small_db):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    with pytest.raises(QueryError, match="timeout"):
        query_sqlite_readonly(small_db, endless, timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + MARGIN_S


def test_huge_results_and_non_sql_fail_cleanly(small_db):
    with pytest.raises(QueryError, match="more than 10 rows"):
        query_sqlite_readonly(small_db, "SELECT a.id FROM t a, t b, t c", max_rows=10)
    with pytest.raises(QueryError, match="syntax error"):
        query_sqlite_readonly(small_db, "this is not sql")
    with pytest.raises(QueryError, match="not found"):
        query_sqlite_readonly(small_db.parent / "missing.sqlite", "SELECT 1")
    assert os.path.exists(small_db)
