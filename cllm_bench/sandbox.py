"""Running model-written Python without trusting it.

Every program runs in a separate process, never in the caller's interpreter, in two
layers:

1. **OS isolation** (when :func:`cllm_bench.isolation.detect_isolation` finds
   bubblewrap usable): the process runs in its own user, PID, mount, IPC, UTS and
   network namespaces, on a read-only view of the file system whose only writable
   place is a private, size-capped tmpfs (its working directory), with no
   capabilities, an empty environment and an unprivileged uid; see
   :mod:`cllm_bench.isolation`. Killing the sandbox's outer process kills everything
   inside it (``--die-with-parent`` and the PID namespace).
2. **In-process guard** (always, also the only layer without bubblewrap): the bootstrap
   sets resource limits first (CPU seconds, address space ``memory_mb``, file size
   ``file_size_mb``, process count 1, no core dumps) and installs an audit hook
   (``sys.addaudithook``) refusing process creation, signals, sockets, ``ctypes``,
   ``resource.setrlimit`` and file writes outside the working directory; sockets are
   replaced by stand-ins raising ``OSError``. Without bubblewrap the child also gets a
   new session (its whole process group is killed afterwards), a fresh temporary
   working directory (removed afterwards) and, when the kernel allows, a private
   network namespace. This layer alone is a guard against accidents and runaway
   programs, not a security boundary: the hook can be bypassed.

A failed program never raises or hangs in the caller: :func:`run_python` always returns
an :class:`ExecutionResult` whose ``reason`` says what happened ("passed", "timeout",
"memory", "error: AssertionError: ...", ...). Model-written SQL runs through the same
machinery, see :mod:`cllm_bench.sql_sandbox`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cllm_bench.isolation import Isolation, bwrap_command, detect_isolation, popen_user_args

#: exit status the bootstrap uses when the program raised (any BaseException)
_EXIT_RAISED = 3
#: prefix of the last stderr line the bootstrap writes when the program raised
_MARKER = "__cllm_sandbox_exception__ "
#: bytes of output kept from the end of the program's combined stdout/stderr
_TAIL_BYTES = 4096
#: default size of the sandbox's only writable place (all files together)
DEFAULT_DISK_MB = 64

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000

# The child's first code (trusted). It reads the program from stdin (then points stdin
# at /dev/null), writes it to program.py for tracebacks, sets the resource limits given
# as JSON, installs the guards, runs the program as __main__ and reports an exception
# through _MARKER + exit status _EXIT_RAISED. Exit status 0 means the program ran to its
# end; SystemExit counts as a failure, so a program cannot skip its own tests by exiting
# early. Every name the hook uses is bound when it is installed, so rebinding a builtin
# or a module attribute later does not change what it checks.
_BOOTSTRAP = r"""
import os, sys, json, resource

def _bootstrap(marker, raised_status, limits_json):
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    workdir = os.path.realpath(os.getcwd())
    program_file = os.path.join(workdir, "program.py")
    with open(program_file, "w", encoding="utf-8") as handle:
        handle.write(source)
    sys.dont_write_bytecode = True

    for name, (soft, hard) in json.loads(limits_json).items():
        kind = getattr(resource, name)
        current = resource.getrlimit(kind)[1]
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(kind, (soft, hard))

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
        "resource.prlimit", "sys.remote_exec", "os.setns", "os.unshare",
    ))
    path_events = frozenset((
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
        "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "os.mkfifo",
        "os.mknod",
    ))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def _inside(arg, dir_fd, realpath=os.path.realpath, join=os.path.join, fspath=os.fspath,
                fsdecode=os.fsdecode, isabs=os.path.isabs, readlink=os.readlink, sep=os.sep,
                devnull=os.devnull, isinstance=isinstance, str=str, bytes=bytes, int=int,
                TypeError=TypeError):
        try:
            path = fspath(arg)
        except TypeError:
            return True  # a file descriptor or a non-path argument
        if isinstance(path, bytes):
            path = fsdecode(path)
        if not isabs(path) and isinstance(dir_fd, int) and dir_fd >= 0:
            path = join(readlink("/proc/self/fd/%d" % dir_fd), path)
        full = realpath(path)
        return full == workdir or full.startswith(workdir + sep) or full == devnull

    def _hook(event, args, denied=denied, path_events=path_events, write_flags=write_flags,
              _inside=_inside, isinstance=isinstance, int=int, str=str, bytes=bytes,
              PathLike=os.PathLike, PermissionError=PermissionError):
        if event in denied:
            raise PermissionError("%s is not allowed in the cllm-bench sandbox" % event)
        if event == "open":
            path, _, flags = args
            if isinstance(flags, int) and flags & write_flags and not _inside(path, None):
                raise PermissionError("writing %r outside the sandbox directory is not allowed" % (path,))
        elif event in path_events:
            dir_fd = args[-1] if event not in ("os.rename", "os.link", "os.truncate", "shutil.rmtree") else None
            for arg in args:
                if isinstance(arg, (str, bytes, PathLike)) and not _inside(arg, dir_fd):
                    raise PermissionError("%s on %r outside the sandbox directory is not allowed" % (event, arg))

    sys.addaudithook(_hook)
    namespace = {"__name__": "__main__", "__file__": program_file, "__builtins__": __builtins__}
    try:
        exec(compile(source, program_file, "exec"), namespace)
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

_bootstrap(sys.argv[1], int(sys.argv[2]), sys.argv[3])
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
    isolation: "bubblewrap" or "none" (see :mod:`cllm_bench.isolation`).
    """

    passed: bool
    reason: str
    stdout_tail: str
    duration_s: float = 0.0
    isolation: str = "none"


@dataclass(frozen=True)
class Limits:
    """What one sandboxed program may use.

    timeout_s: wall-clock seconds (the CPU limit is a second above it); memory_mb:
    address space; file_size_mb: each file, its output included; disk_mb: all files it
    writes together (the tmpfs size; enforced only under bubblewrap).
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    disk_mb: int = DEFAULT_DISK_MB

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) per ``resource.RLIMIT_*`` name, set by the bootstrap.

        RLIMIT_NPROC counts every process of the (outer) user, so 1 means: no new process
        or thread at all; the kernel exempts root from it, which is why bubblewrap runs
        as an unprivileged uid when the harness is root.
        """
        cpu = max(1, math.ceil(self.timeout_s)) + 1
        memory = int(self.memory_mb) * 1024 * 1024
        fsize = int(self.file_size_mb) * 1024 * 1024
        return {
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_AS": (memory, memory),
            "RLIMIT_FSIZE": (fsize, fsize),
            "RLIMIT_NPROC": (1, 1),
            "RLIMIT_CORE": (0, 0),
        }


@dataclass(frozen=True)
class RawRun:
    """A finished child, before classification: exit status (negative: signal), whether
    the caller killed it at the deadline, its whole output (capped by the file-size
    limit), and the wall-clock duration."""

    returncode: int
    timed_out: bool
    output: bytes
    duration_s: float
    isolation: str


def _unshare_function() -> Callable[[int], Any] | None:
    """``unshare(flags)`` raising or returning non-zero on failure, or None if unavailable."""
    if hasattr(os, "unshare"):  # Python >= 3.12
        return os.unshare
    try:
        return ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


def _make_preexec(rlimits: dict[str, tuple[int, int]], unshare: Callable[[int], Any] | None) -> Callable[[], None]:
    """Fallback mode only: the function run in the forked child before exec (rlimits, then
    a private network namespace when the kernel allows it). It must not allocate much."""
    pairs = [(getattr(resource, name), _clamp(getattr(resource, name), *value)) for name, value in rlimits.items()]

    def preexec() -> None:
        for kind, value in pairs:
            resource.setrlimit(kind, value)
        if unshare is None:
            return
        for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
            try:
                if unshare(flags) in (0, None):
                    return
            except OSError:
                pass

    return preexec


def _clamp(kind: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) no higher than the current hard limit (an unprivileged child may not raise it)."""
    current_hard = resource.getrlimit(kind)[1]
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    return soft, hard


def _fallback_env(workdir: str) -> dict[str, str]:
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip


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


def run_program(
    program: str,
    limits: Limits,
    *,
    isolation: Isolation | None = None,
    data_files: tuple[tuple[Path, str], ...] = (),
) -> RawRun:
    """Run ``program`` (Python source) in the sandbox and return how it ended; never
    raises for anything the program does (OSError only when no process can start).

    ``isolation``: default :func:`detect_isolation`. ``data_files``: (host file, path
    inside the sandbox under ``/tmp``) pairs, copied in read-only under bubblewrap; in
    the fallback the program must use the host path itself.
    """
    isolation = detect_isolation() if isolation is None else isolation
    start = time.monotonic()
    rlimits = limits.rlimits()
    argv_tail = ["-I", "-c", _BOOTSTRAP, _MARKER, str(_EXIT_RAISED), json.dumps(rlimits)]
    # the fallback's working directory on the host; bubblewrap brings its own private tmpfs
    private_dir = contextlib.nullcontext("") if isolation.isolated else \
        tempfile.TemporaryDirectory(prefix="cllm-sandbox-", ignore_cleanup_errors=True)  # fmt: skip
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output, private_dir as workdir:
        stdin.write(program.encode("utf-8"))
        stdin.flush()
        stdin.seek(0)
        common: dict[str, Any] = {"stdin": stdin, "stdout": output, "stderr": subprocess.STDOUT, "start_new_session": True}
        opened: list[int] = []
        try:
            if isolation.isolated:
                opened = [os.open(host, os.O_RDONLY | os.O_CLOEXEC) for host, _ in data_files]
                data = tuple((fd, inside) for fd, (_, inside) in zip(opened, data_files))
                cmd = bwrap_command(isolation, [isolation.python, *argv_tail],
                                    disk_bytes=limits.disk_mb * 1024 * 1024, data_files=data)  # fmt: skip
                proc = subprocess.Popen(cmd, env={"PATH": os.defpath}, pass_fds=tuple(opened), cwd="/",
                                        **popen_user_args(isolation), **common)  # fmt: skip
            else:
                proc = subprocess.Popen([isolation.python, *argv_tail], cwd=workdir, env=_fallback_env(workdir),
                                        preexec_fn=_make_preexec(rlimits, _unshare_function()), **common)  # fmt: skip
        finally:
            for fd in opened:
                os.close(fd)
        try:
            timed_out = _wait_without_reaping(proc.pid, limits.timeout_s)
        finally:
            _kill_group(proc.pid)  # the leftovers, or all of it after a timeout (bwrap: the whole sandbox)
            returncode = proc.wait()
        if isolation.isolated and returncode > 128:
            returncode = -(returncode - 128)  # bwrap reports a signal N as exit status 128 + N
        output.seek(0)
        text = output.read()
    return RawRun(returncode, timed_out, text, time.monotonic() - start, isolation.kind)


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
    if output.startswith("bwrap:"):
        return False, f"error: the sandbox did not start: {lines[0][:300]}", clean
    return False, f"error: exit status {returncode}", clean


def result_of(run: RawRun, limits: Limits) -> ExecutionResult:
    """The :class:`ExecutionResult` of a finished child (its output tail kept)."""
    text = run.output[-_TAIL_BYTES:].decode("utf-8", errors="replace")
    passed, reason, tail = classify(run.returncode, run.timed_out, text)
    if not passed and len(run.output) >= limits.file_size_mb * 1024 * 1024:
        reason = "output limit"  # writes to stdout/stderr beyond file_size_mb failed
    return ExecutionResult(passed, reason, tail, run.duration_s, run.isolation)


def run_python(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    file_size_mb: int = 16,
    disk_mb: int = DEFAULT_DISK_MB,
    isolation: Isolation | None = None,
) -> ExecutionResult:
    """Run ``program`` (Python source) sandboxed; never raises for anything the program does.

    The program runs as ``__main__`` with a fresh, private working directory that
    disappears afterwards. ``timeout_s`` is wall-clock (the CPU limit is a second above
    it); ``memory_mb`` caps the address space; ``file_size_mb`` caps every file the
    program writes, its output included; ``disk_mb`` caps all its files together (under
    bubblewrap). ``isolation``: default :func:`detect_isolation`.
    """
    limits = Limits(timeout_s, memory_mb, file_size_mb, disk_mb)
    try:
        run = run_program(program, limits, isolation=isolation)
    except (OSError, subprocess.SubprocessError) as err:
        return ExecutionResult(False, f"error: cannot start the sandbox: {err}", "", 0.0)
    return result_of(run, limits)


def run_python_many(
    programs: Sequence[str],
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    max_workers: int | None = None,
    isolation: Isolation | None = None,
) -> list[ExecutionResult]:
    """:func:`run_python` on every program, ``max_workers`` at a time (default: CPU count),
    each in its own sandbox; results in the order of ``programs``.

    Timeouts are wall-clock, so more workers than cores can make slow programs time out.
    """
    if not programs:
        return []
    isolation = detect_isolation() if isolation is None else isolation
    workers = max(1, min(len(programs), max_workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_python(source, timeout_s, memory_mb, isolation=isolation), programs))
