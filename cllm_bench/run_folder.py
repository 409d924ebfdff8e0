"""The run folder as a resource: checked before use, held exclusively while a run writes.

* :func:`check_output_path` (reads only): the folder is a folder, not a file, and it (or
  the nearest existing folder above it, where it will be created) is writable;
* :class:`RunFolderLock`: an exclusive ``fcntl.flock`` on ``<run folder>/.cllm-bench.lock``,
  taken without waiting. A second ``cllm-bench run`` on the same folder gets a
  :class:`~cllm_bench.errors.UserError` naming the holder's pid while the first runs. The
  kernel drops the lock when its file descriptor closes, so it is released on exit, on an
  exception and on a crash or kill alike; the (empty but for a pid) file stays behind and
  is harmless — deleting it on exit would race with a process about to lock it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from cllm_bench.errors import UserError

LOCK_FILE = ".cllm-bench.lock"


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its closest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_path(out: Path, flag: str = "--output-path") -> None:
    """Raise :class:`UserError` unless ``out`` is (or can be created as) a writable folder.

    Writes nothing. A permission the process lacks is caught here; a read-only file system,
    or a folder that only root's privileges make writable, is caught when the folder is
    first written (:class:`RunFolderLock` turns that ``OSError`` into a :class:`UserError`).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder; pass a folder path (it is created when missing)")
    base = nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"{flag} {out}: {base} is a file, so the folder cannot be created there; pass another path")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "is not writable" if base == out else f"cannot be created: {base} is not writable"
        raise UserError(f"{flag} {out} {what} by this user; pass a writable folder or fix its permissions")


class RunFolderLock:
    """Exclusive lock on a run folder for the duration of a ``with`` block.

    Entering creates the folder (parents too) and the lock file; an ``OSError`` there (a
    read-only file system, no permission) becomes a :class:`UserError`. The lock file holds
    the holder's pid, shown to a second process that finds the folder locked.
    """

    def __init__(self, folder: Path, flag: str = "--output-path") -> None:
        self.folder = folder
        self.flag = flag
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def __enter__(self) -> "RunFolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write to {self.flag} {self.folder}: {exc.strerror}; pass a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"another cllm-bench run (pid {holder}) is writing to {self.folder}; wait for it to finish, "
                f"or pass another {self.flag}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
