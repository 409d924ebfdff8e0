"""Running model-written code without trusting it.

Python programs run only in a separate process (``sys.executable -I``), never in the
caller's interpreter:

* a fresh temporary directory is the working directory, ``HOME`` and ``TMPDIR``; it is
  deleted afterwards;
* a wall-clock timeout: on expiry the whole process group is killed (the child is the
  leader of its own session); leftover members are killed after a normal exit too;
* resource limits set by ``resource.setrlimit`` in ``preexec_fn``: CPU seconds, address
  space (``memory_mb``), file size, process count and no core dumps. RLIMIT_NPROC is 1:
  for a non-root user no new process *or thread* can start (the kernel counts threads
  as processes); root is exempt from it, so the audit hook below is the fork guard there;
* no network: the child is moved into a new network namespace when the kernel permits
  it (``unshare(CLONE_NEWNET)``, via ``os.unshare`` or libc; silently skipped
  otherwise), and, before the program runs, ``socket.socket`` and friends are replaced
  by stand-ins raising ``OSError``;
* an audit hook (``sys.addaudithook``, which the program cannot remove) refuses
  process creation (fork, exec, spawn, subprocess, system), signals to other
  processes, sockets, ``ctypes`` and ``resource.setrlimit``, and file writes, removals
  and renames outside the temporary directory.

This is a guard against accidents and runaway programs (infinite loops, fork bombs,
memory hogs, stray writes, network calls), not a security boundary against a
determined attacker: the program still runs as the caller's user.

A failed program never raises or hangs in the caller: :func:`run_python` always returns
an :class:`ExecutionResult` whose ``reason`` says what happened ("passed", "timeout",
"memory", "error: AssertionError: ...", ...).

SQL from a model is run by :func:`query_sqlite_readonly`: in-process, on a database
opened read-only, with an authorizer that allows reads only and a time limit.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

#: exit status the bootstrap uses when the program raised (any BaseException)
_EXIT_RAISED = 3
#: prefix of the last stderr line the bootstrap writes when the program raised
_MARKER = "__cllm_sandbox_exception__ "
#: bytes of output kept from the end of the program's combined stdout/stderr
_TAIL_BYTES = 4096

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000

# The child's first code. It reads the program, installs the guards, runs the program
# as __main__ and reports an exception through _MARKER + exit status _EXIT_RAISED.
# Exit status 0 means the program ran to its end; SystemExit counts as a failure, so a
# program cannot skip its own tests by exiting early.
_BOOTSTRAP = r"""
import os, sys

def _bootstrap(program_file, marker, raised_status):
    workdir = os.path.realpath(os.getcwd())
    with open(program_file, encoding="utf-8") as handle:
        source = handle.read()
    sys.dont_write_bytecode = True

    import socket, _socket

    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the cllm-bench sandbox")

    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _no_network()

    for module in (socket, _socket):
        module.socket = _NoSocket
        for name in ("create_connection", "create_server", "socketpair", "fromfd",
                     "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            if hasattr(module, name):
                setattr(module, name, _no_network)

    denied = frozenset((
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
        "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn",
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "resource.setrlimit",
        "resource.prlimit", "sys.remote_exec",
    ))
    path_events = frozenset((
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
        "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "os.mkfifo",
        "os.mknod",
    ))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    realpath, join, fspath = os.path.realpath, os.path.join, os.fspath

    def _inside(arg, dir_fd):
        try:
            path = fspath(arg)
        except TypeError:
            return True  # a file descriptor or a non-path argument
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not os.path.isabs(path) and isinstance(dir_fd, int) and dir_fd >= 0:
            path = join(os.readlink("/proc/self/fd/%d" % dir_fd), path)
        full = realpath(path)
        return full == workdir or full.startswith(workdir + os.sep) or full == os.devnull

    def _hook(event, args):
        if event in denied:
            raise PermissionError("%s is not allowed in the cllm-bench sandbox" % event)
        if event == "open":
            path, _, flags = args
            if isinstance(flags, int) and flags & write_flags and not _inside(path, None):
                raise PermissionError("writing %r outside the sandbox directory is not allowed" % (path,))
        elif event in path_events:
            dir_fd = args[-1] if event not in ("os.rename", "os.link", "os.truncate", "shutil.rmtree") else None
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg, dir_fd):
                    raise PermissionError("%s on %r outside the sandbox directory is not allowed" % (event, arg))

    sys.addaudithook(_hook)
    namespace = {"__name__": "__main__", "__file__": join(workdir, program_file), "__builtins__": __builtins__}
    try:
        exec(compile(source, join(workdir, program_file), "exec"), namespace)
    except BaseException as err:
        import traceback
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        message = " ".join(str(err).split())[:500]
        sys.stderr.write("\n%s%s: %s\n" % (marker, type(err).__name__, message))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(raised_status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

_bootstrap(sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one sandboxed program.

    passed: the program ran to its end without raising (exit status 0) within limits.
    reason: "passed", "timeout", "memory", "output limit", "file size limit",
        "error: <Type>: <message>", "crashed: <signal>", "killed: ..." or
        "error: exit status N"; never empty.
    stdout_tail: the last few thousand characters of stdout and stderr together.
    duration_s: wall-clock seconds from start to exit (or kill).
    """

    passed: bool
    reason: str
    stdout_tail: str
    duration_s: float = 0.0


@dataclass(frozen=True)
class _Limits:
    """(soft, hard) rlimit pairs applied in the child before exec."""

    cpu: tuple[int, int]
    address_space: tuple[int, int]
    file_size: tuple[int, int]
    processes: tuple[int, int]


def _clamp(kind: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) no higher than the current hard limit (an unprivileged child may not raise it)."""
    current_hard = resource.getrlimit(kind)[1]
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    return soft, hard


def _limits(timeout_s: float, memory_mb: int, file_size_mb: int) -> _Limits:
    cpu = max(1, math.ceil(timeout_s)) + 1
    memory = memory_mb * 1024 * 1024
    fsize = file_size_mb * 1024 * 1024
    return _Limits(
        cpu=_clamp(resource.RLIMIT_CPU, cpu, cpu + 1),
        address_space=_clamp(resource.RLIMIT_AS, memory, memory),
        file_size=_clamp(resource.RLIMIT_FSIZE, fsize, fsize),
        # counts every process of the user, so 1 means: no fork at all (root is exempt)
        processes=_clamp(resource.RLIMIT_NPROC, 1, 1),
    )


def _unshare_function() -> Callable[[int], Any] | None:
    """``unshare(flags)`` raising or returning non-zero on failure, or None if unavailable.

    Resolved in the parent so that the forked child only calls it.
    """
    if hasattr(os, "unshare"):  # Python >= 3.12
        return os.unshare
    try:
        return ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


def _make_preexec(limits: _Limits, unshare: Callable[[int], Any] | None) -> Callable[[], None]:
    """The function run in the forked child before exec: rlimits, then a private network.

    It must not import or allocate much: it runs between fork and exec.
    """

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, limits.cpu)
        resource.setrlimit(resource.RLIMIT_AS, limits.address_space)
        resource.setrlimit(resource.RLIMIT_FSIZE, limits.file_size)
        resource.setrlimit(resource.RLIMIT_NPROC, limits.processes)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if unshare is None:
            return
        for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
            try:
                if unshare(flags) in (0, None):
                    return
            except OSError:
                pass

    return preexec


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _wait_without_reaping(pid: int, timeout_s: float) -> bool:
    """Wait until child ``pid`` exits or ``timeout_s`` passes; True when it timed out.

    The child is left a zombie (WNOWAIT), so its pid - the process group id - cannot be
    reused before the caller kills the group and reaps it.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_tail(handle: Any) -> tuple[str, int]:
    """(last _TAIL_BYTES of the file as text, file size in bytes)."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - _TAIL_BYTES))
    return handle.read().decode("utf-8", errors="replace"), size


def classify(returncode: int, timed_out: bool, output: str) -> tuple[bool, str, str]:
    """(passed, reason, output without the bootstrap's marker line) of a finished child.

    Pure function of the exit status, whether the caller killed it at the deadline, and
    its output tail.
    """
    lines = output.rstrip("\n").split("\n")
    marker_line = next((line for line in reversed(lines) if line.startswith(_MARKER)), None)
    clean = "\n".join(line for line in lines if not line.startswith(_MARKER)).rstrip()
    if timed_out:
        return False, "timeout", clean
    if returncode == 0:
        return True, "passed", clean
    looks_oom = "MemoryError" in output or "Cannot allocate memory" in output or "out of memory" in output
    if returncode == _EXIT_RAISED and marker_line is not None:
        error = marker_line[len(_MARKER):]
        if error.startswith("MemoryError"):
            return False, "memory", clean
        return False, f"error: {error}".rstrip(": "), clean
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU:
            return False, "timeout", clean
        if sig == signal.SIGXFSZ:
            return False, "file size limit", clean
        if looks_oom:
            return False, "memory", clean
        if sig == signal.SIGKILL:
            return False, "killed: SIGKILL (out of memory?)", clean
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return False, f"crashed: {name}", clean
    if looks_oom:
        return False, "memory", clean
    return False, f"error: exit status {returncode}", clean


def run_python(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    file_size_mb: int = 16,
) -> ExecutionResult:
    """Run ``program`` (Python source) in a sandboxed child process; never raises for
    anything the program does.

    The program runs as ``__main__`` in a fresh temporary directory that is removed
    afterwards. ``timeout_s`` is wall-clock (the CPU limit is a second above it);
    ``memory_mb`` caps the address space; ``file_size_mb`` caps every file the program
    writes, its output included.
    """
    start = time.monotonic()
    limits = _limits(timeout_s, memory_mb, file_size_mb)
    with tempfile.TemporaryDirectory(prefix="cllm-sandbox-", ignore_cleanup_errors=True) as workdir, \
            tempfile.TemporaryFile() as output:
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, "program.py", _MARKER, str(_EXIT_RAISED)],
                cwd=workdir,
                env=_child_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_make_preexec(limits, _unshare_function()),
            )
        except (OSError, subprocess.SubprocessError) as err:
            return ExecutionResult(False, f"error: cannot start the sandbox: {err}", "", time.monotonic() - start)
        try:
            timed_out = _wait_without_reaping(proc.pid, timeout_s)
        finally:
            _kill_group(proc.pid)  # the program's leftovers, or all of it after a timeout
            returncode = proc.wait()
        duration = time.monotonic() - start
        text, size = _read_tail(output)
        passed, reason, tail = classify(returncode, timed_out, text)
        if not passed and size >= limits.file_size[0]:
            reason = "output limit"  # writes to stdout/stderr beyond file_size_mb failed
    return ExecutionResult(passed, reason, tail, duration)


def run_python_many(
    programs: Sequence[str],
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    max_workers: int | None = None,
) -> list[ExecutionResult]:
    """:func:`run_python` on every program, ``max_workers`` at a time (default: CPU count),
    each in its own process; results in the order of ``programs``.

    Timeouts are wall-clock, so more workers than cores can make slow programs time out.
    """
    if not programs:
        return []
    workers = max(1, min(len(programs), max_workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_python(source, timeout_s, memory_mb), programs))


# --- SQL -------------------------------------------------------------------------------

class QueryError(Exception):
    """A query that failed: invalid SQL, a refused operation, a timeout, too many rows."""


#: sqlite authorizer action codes a read-only query needs (33 = SQLITE_RECURSIVE)
_SQL_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQL_ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def query_sqlite_readonly(
    db_path: Path | str,
    sql: str,
    timeout_s: float = 5.0,
    max_rows: int = 100_000,
) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement run on ``db_path`` opened read-only.

    Only reading is authorized (SELECT, reads, functions, recursive CTEs: no writes, no
    ATTACH, no PRAGMA); the statement is interrupted after ``timeout_s`` seconds (a
    progress handler checks the clock) and refused beyond ``max_rows`` rows. Raises
    :class:`QueryError` for every failure; the database file is never modified.
    """
    path = Path(db_path)
    if not path.is_file():
        raise QueryError(f"database file not found: {path}")
    deadline = time.monotonic() + timeout_s
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as err:
        raise QueryError(f"cannot open {path}: {err}") from None
    try:
        conn.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
        conn.set_authorizer(_authorize)
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            raise QueryError(f"query returned more than {max_rows} rows")
        return rows
    except sqlite3.OperationalError as err:
        if str(err) == "interrupted" and time.monotonic() > deadline:
            raise QueryError(f"timeout: query ran longer than {timeout_s:g} s") from None
        raise QueryError(str(err)) from None
    except (sqlite3.Error, ValueError, OverflowError, MemoryError) as err:
        raise QueryError(f"{type(err).__name__}: {err}") from None
    finally:
        conn.close()
