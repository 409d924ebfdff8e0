"""OS-level isolation for model-written code: finding and driving bubblewrap.

Model-written code (HumanEval programs, Spider SQL) runs in a bubblewrap (``bwrap``)
sandbox when this machine can make one, see :func:`bwrap_command`:

* new user, PID, mount, IPC, UTS, cgroup and network namespaces (``--unshare-all``
  plus ``--unshare-user``): no network at all (not even 127.0.0.1 of the host), no view
  of the harness's processes (an own ``/proc``), so no signal, ``pidfd`` or
  ``/proc/<pid>/environ`` can reach them;
* the host's root file system bound read-only; one private tmpfs at ``/tmp`` of
  ``disk_bytes`` (``--size``) is the only writable place, and it vanishes with the
  sandbox; ``/dev`` is bwrap's minimal one, remounted read-only;
* ``--die-with-parent``, ``--new-session``, ``--cap-drop ALL``, uid/gid 65534 inside,
  an empty environment (``--clearenv`` plus a few fixed variables);
* when the harness runs as root, bwrap itself is started as uid/gid 65534 (``nobody``)
  when that works here, so the sandbox is an unprivileged user for the kernel too: the
  process limit (RLIMIT_NPROC) applies and root-only files stay unreadable. Otherwise
  (no interpreter ``nobody`` can run) bwrap runs as the caller and ``outer_uid`` in the
  provenance says so.

:func:`detect_isolation` finds out once per process (the machine does not change during
a run) whether this works, by starting a real sandbox; when it does not, the result is
``kind == "none"`` with the reason, and :mod:`cllm_bench.sandbox` falls back to its
audit-hook guard. :func:`announce_isolation` is what a command calls once before it
runs model-written code: it warns loudly about the fallback (or refuses it when
isolation is required) and returns the provenance record.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, TextIO

from cllm_bench.errors import UserError

#: uid and gid of the sandboxed program (inside the namespace; outside too when root)
SANDBOX_UID = 65534
#: the only writable directory inside the sandbox (a size-capped tmpfs)
SANDBOX_TMP = "/tmp"
#: environment variable: "1" makes a missing isolation an error (exit 2), not a warning
REQUIRE_ENV = "CLLM_BENCH_REQUIRE_SANDBOX"
#: how to install the isolation tool, for messages
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`)"
#: seconds the start-up probe may take on a loaded machine
_PROBE_TIMEOUT_S = 60.0
#: environment of the sandboxed program (everything else is cleared)
SANDBOX_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SANDBOX_TMP,
    "TMPDIR": SANDBOX_TMP,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class Isolation:
    """How model-written code is isolated on this machine.

    kind: "bubblewrap" (OS namespaces, see the module docstring) or "none" (the audit
        hook and rlimits of :mod:`cllm_bench.sandbox` only).
    bwrap: path of the bwrap binary (None when kind is "none").
    python: the interpreter run inside the sandbox (an absolute path).
    outer_uid: the uid bwrap is started as (65534 when the harness is root and that
        works), or None for the caller's own uid.
    version: ``bwrap --version`` output, or None.
    reason: why kind is "none" (None otherwise).
    """

    kind: str
    python: str
    bwrap: str | None = None
    outer_uid: int | None = None
    version: str | None = None
    reason: str | None = None
    namespaces: tuple[str, ...] = field(default=("user", "pid", "mount", "ipc", "uts", "net", "cgroup"))

    @property
    def isolated(self) -> bool:
        return self.kind == "bubblewrap"

    @classmethod
    def none(cls, reason: str) -> "Isolation":
        """The hook-only fallback, for ``reason``."""
        return cls(kind="none", python=sys.executable, reason=reason, namespaces=())

    def provenance(self) -> dict[str, Any]:
        """The JSON record stored as ``provenance["sandbox"]``."""
        if not self.isolated:
            return {"isolation": "none", "reason": self.reason, "guard": "audit hook + rlimits (not a security boundary)"}
        return {
            "isolation": "bubblewrap",
            "bwrap": self.bwrap,
            "version": self.version,
            "namespaces": list(self.namespaces),
            "uid_inside": SANDBOX_UID,
            "outer_uid": self.outer_uid if self.outer_uid is not None else os.geteuid(),
            "python": self.python,
            "writable": f"{SANDBOX_TMP} (private tmpfs, size-capped)",
        }


def bwrap_command(
    isolation: Isolation,
    argv: list[str],
    *,
    disk_bytes: int,
    data_files: tuple[tuple[int, str], ...] = (),
) -> list[str]:
    """The full command line running ``argv`` inside a bubblewrap sandbox.

    ``disk_bytes``: size of the private tmpfs at :data:`SANDBOX_TMP` (the only writable
    place; its working directory). ``data_files``: (fd, path) pairs; the content of each
    open file descriptor is copied into a read-only file at ``path`` (under
    :data:`SANDBOX_TMP`) before the program starts, so the sandbox needs no access to
    the file's real location.
    """
    if not isolation.isolated or isolation.bwrap is None:
        raise ValueError("bwrap_command needs a bubblewrap isolation")
    cmd = [
        isolation.bwrap,
        "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "cllm-sandbox",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--size", str(int(disk_bytes)), "--tmpfs", SANDBOX_TMP,
    ]  # fmt: skip
    for fd, path in data_files:
        cmd += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    cmd += ["--remount-ro", "/dev", "--chdir", SANDBOX_TMP, "--clearenv"]
    for key, value in SANDBOX_ENV.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--", *argv]


def popen_user_args(isolation: Isolation) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments starting bwrap as :attr:`Isolation.outer_uid`."""
    if isolation.outer_uid is None:
        return {}
    return {"user": isolation.outer_uid, "group": isolation.outer_uid, "extra_groups": []}


def _candidate_interpreters() -> list[str]:
    """Python interpreters to try inside the sandbox, the harness's own first."""
    names = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
             os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable), "/usr/bin/python3"]  # fmt: skip
    out: list[str] = []
    for name in names:
        if name and os.path.isabs(name) and os.path.isfile(name) and name not in out:
            out.append(name)
    return out


def _probe(candidate: Isolation) -> str | None:
    """None when ``candidate`` can start a sandboxed Python here, else the error."""
    check = "import resource, sqlite3, json, sys; sys.stdout.write('cllm-sandbox-ok')"
    cmd = bwrap_command(candidate, [candidate.python, "-I", "-S", "-c", check], disk_bytes=1 << 20)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              env={"PATH": SANDBOX_ENV["PATH"]}, **popen_user_args(candidate))  # fmt: skip
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    if proc.returncode == 0 and proc.stdout == "cllm-sandbox-ok":
        return None
    return " ".join((proc.stderr or proc.stdout or f"exit status {proc.returncode}").split())[:300]


@functools.lru_cache(maxsize=None)
def detect_isolation(bwrap: str | None = "bwrap") -> Isolation:
    """The best isolation this machine offers (see the module docstring).

    ``bwrap``: the program name or path to look for (None: do not look, "none").
    Memoized per process: it starts a real sandbox, and the answer does not change.
    """
    path = shutil.which(bwrap) if bwrap else None
    if path is None:
        return Isolation.none(f"bubblewrap (`bwrap`) not found on PATH; {INSTALL_HINT}")
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        version = None
    attempts: list[tuple[int | None, str]] = []
    if os.geteuid() == 0:
        attempts += [(SANDBOX_UID, python) for python in _candidate_interpreters()]
    attempts.append((None, sys.executable))
    error = "no interpreter"
    for outer_uid, python in attempts:
        candidate = Isolation(kind="bubblewrap", python=python, bwrap=path, outer_uid=outer_uid, version=version)
        failure = _probe(candidate)
        if failure is None:
            return candidate
        error = failure
    return Isolation.none(f"bwrap cannot create a sandbox on this machine ({error})")


def isolation_required(environ: Mapping[str, str] | None = None) -> bool:
    """True when :data:`REQUIRE_ENV` is set to 1/true/yes in ``environ`` (default os.environ)."""
    value = (os.environ if environ is None else environ).get(REQUIRE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def announce_isolation(isolation: Isolation, *, require: bool, stream: TextIO | None = None) -> dict[str, Any]:
    """Call once per command before model-written code runs; returns the provenance record.

    Without isolation: raises :class:`UserError` when ``require`` (the command exits 2),
    else writes one loud warning to ``stream`` (default stderr) and execution proceeds
    behind the audit-hook guard.
    """
    if not isolation.isolated:
        if require:
            raise UserError(
                f"OS-level sandbox required ({REQUIRE_ENV}=1 or --require-isolation) but unavailable: "
                f"{isolation.reason}"
            )
        out = stream if stream is not None else sys.stderr
        out.write(
            "WARNING: model-written code will run WITHOUT OS-level isolation: "
            f"{isolation.reason}. Only an audit-hook guard and resource limits protect this machine, "
            f"and they can be bypassed. {INSTALL_HINT[0].upper() + INSTALL_HINT[1:]}, or set {REQUIRE_ENV}=1 "
            "to refuse running without it.\n"
        )
        out.flush()
    return isolation.provenance()
