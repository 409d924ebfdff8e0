"""Is the machine quiet enough for the timings to mean anything?

A speedup is a ratio of two timings taken minutes apart; another job using the CPU or GPU
in between makes it fiction (identical work measured 5-76 ms per token while a training
job ran, a fake 13.5x). This module watches for that, before and during timed work:

* **other processes' CPU**: from ``/proc/stat`` (all CPUs' busy time) minus
  ``/proc/self/stat`` (this process's own time, threads and waited-for children included)
  over a window, in cores: ``others = (busy_delta - own_delta) / (total_delta / n_cpus)``;
* **load**: the 1-minute load average beyond what this process accounts for
  (``load_1m - own cores``) above the core count;
* **GPU**: ``torch.cuda.utilization`` (needs NVML) read while this process is idle,
  before timed work — during our own work the GPU is busy by design;
* **repeat spread**: the slowest of a sample's timed repeats over the fastest
  (``max/min``) above :data:`MAX_REPEAT_SPREAD`.

Readings are plain data (:class:`CpuTimes`, :class:`Reading`); :func:`assess` turns two of
them into a list of problems, so tests inject readings and never time anything.
:class:`HealthMonitor` is what the runner holds: it reads the system through injectable
callables, keeps the worst numbers for the provenance and says when to warn (once).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

#: other processes using more than this many cores means a busy machine
MAX_OTHERS_CORES = 0.5
#: a sample whose slowest repeat took this many times its fastest was disturbed
MAX_REPEAT_SPREAD = 1.5
#: GPU utilisation (%) while we are idle above which someone else is using the GPU
MAX_IDLE_GPU_UTIL = 10.0
#: shortest window (s) over which CPU shares are computed (/proc counts in 10 ms ticks)
MIN_WINDOW_S = 0.25


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time counters, in clock ticks.

    total: all CPUs, every state (``/proc/stat`` "cpu" line, guest columns excluded).
    idle: all CPUs idle + iowait. own: this process (utime + stime + children's).
    """

    total: int
    idle: int
    own: int


@dataclass(frozen=True)
class Reading:
    """One look at the machine. ``cpu`` None where ``/proc`` is unreadable (non-Linux);
    ``gpu_util`` None without CUDA/NVML; ``clock`` in seconds (monotonic)."""

    clock: float
    load_1m: float | None
    cpu: CpuTimes | None
    gpu_util: float | None = None


@dataclass(frozen=True)
class Window:
    """What happened between two readings: other processes' and our CPU use, in cores."""

    seconds: float
    others_cores: float | None
    own_cores: float | None
    load_1m: float | None
    gpu_util: float | None


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(total, idle) ticks from ``/proc/stat``'s first line ``cpu user nice system idle iowait
    irq softirq steal guest guest_nice`` (guest time is already counted in user/nice)."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    counted = fields[:8]
    return sum(counted), counted[3] + (counted[4] if len(counted) > 4 else 0)


def parse_self_stat(text: str) -> int:
    """utime + stime + cutime + cstime (fields 14-17) from ``/proc/<pid>/stat``; the command
    name (field 2) may hold spaces, so fields are counted after its closing parenthesis."""
    after = text[text.rindex(")") + 2 :].split()
    return sum(int(v) for v in after[11:15])


def read_cpu_times(proc: Path = Path("/proc")) -> CpuTimes | None:
    """Current :class:`CpuTimes`, or None where ``/proc`` cannot be read."""
    try:
        total, idle = parse_proc_stat((proc / "stat").read_text())
        own = parse_self_stat((proc / "self" / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return CpuTimes(total=total, idle=idle, own=own)


def read_load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def read_gpu_util() -> float | None:
    """Utilisation (%) of the current CUDA device over the last sample period; None when
    CUDA or NVML is unavailable."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return float(torch.cuda.utilization())
    except Exception:  # NVML missing or failing: no GPU reading, not an error
        return None


def system_reading(gpu: bool = False) -> Reading:
    return Reading(clock=time.monotonic(), load_1m=read_load(), cpu=read_cpu_times(),
                   gpu_util=read_gpu_util() if gpu else None)  # fmt: skip


def window(before: Reading, after: Reading, n_cpus: int) -> Window:
    """CPU shares between two readings (None where a counter is missing or did not move)."""
    others = own = None
    if before.cpu is not None and after.cpu is not None:
        total = after.cpu.total - before.cpu.total
        if total > 0:
            per_core = total / n_cpus
            busy = total - (after.cpu.idle - before.cpu.idle)
            mine = after.cpu.own - before.cpu.own
            own = mine / per_core
            others = max(busy - mine, 0) / per_core
    return Window(seconds=after.clock - before.clock, others_cores=others, own_cores=own, load_1m=after.load_1m,
                  gpu_util=after.gpu_util)  # fmt: skip


def assess(win: Window, n_cpus: int, idle: bool = False) -> list[str]:
    """Problems seen in ``win`` (empty: quiet). ``idle``: this process did no work in the
    window, so any GPU use is someone else's."""
    problems = []
    if win.others_cores is not None and win.others_cores > MAX_OTHERS_CORES:
        problems.append(f"other processes used {win.others_cores:.1f} of {n_cpus} CPU cores")
    if win.load_1m is not None:
        beyond = win.load_1m - (win.own_cores or 0.0)
        if beyond > n_cpus:
            problems.append(f"1-min load {win.load_1m:.1f} (beyond this process: {beyond:.1f}) > {n_cpus} cores")
    if idle and win.gpu_util is not None and win.gpu_util > MAX_IDLE_GPU_UTIL:
        problems.append(f"GPU {win.gpu_util:.0f}% busy before timed work")
    return problems


def repeat_spread(decode_s_repeats: Sequence[float]) -> float | None:
    """Slowest over fastest timed repeat of one sample (None with fewer than 2 or a zero)."""
    values = [v for v in decode_s_repeats if v is not None]
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) / min(values)


def cell_health(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary of the samples' ``timing_health`` fields and repeat spreads for one cell:
    ``busy_samples`` (samples timed while a problem was seen), ``spread_samples`` (samples
    whose repeats differ by more than :data:`MAX_REPEAT_SPREAD`), the worst numbers, and
    ``problems`` (distinct, in first-seen order). ``ok`` is False when any sample is flagged."""
    problems: list[str] = []
    busy = spread_bad = 0
    worst_others = worst_spread = None
    for rec in records:
        health = rec.get("timing_health") or {}
        if health.get("problems"):
            busy += 1
            problems += [p for p in health["problems"] if p not in problems]
        others = health.get("others_cores")
        if others is not None:
            worst_others = others if worst_others is None else max(worst_others, others)
        spread = repeat_spread(rec.get("decode_s_repeats") or [])
        if spread is not None:
            worst_spread = spread if worst_spread is None else max(worst_spread, spread)
            spread_bad += spread > MAX_REPEAT_SPREAD
    if spread_bad:
        problems.append(f"{spread_bad} sample(s) with repeat spread max/min > {MAX_REPEAT_SPREAD}")
    return {"ok": not busy and not spread_bad, "busy_samples": busy, "spread_samples": spread_bad,
            "max_others_cores": worst_others, "max_repeat_spread": worst_spread, "problems": problems}  # fmt: skip


@dataclass
class HealthMonitor:
    """The runner's watch over one run.

    :meth:`before_timing` takes two readings ``settle_s`` apart while the process idles
    (other processes' CPU, load, GPU); :meth:`after_sample` is called after each timed
    sample and assesses the window since the last assessment once it spans at least
    :data:`MIN_WINDOW_S` (the counters tick every 10 ms), returning the reading that
    covers the sample. ``read`` and ``sleep`` are injectable for tests.
    """

    n_cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    read: Callable[[bool], Reading] = system_reading
    sleep: Callable[[float], None] = time.sleep
    settle_s: float = 0.5
    problems: list[str] = field(default_factory=list)
    checks: int = 0
    max_others_cores: float | None = None
    max_load_1m: float | None = None
    _last: Reading | None = None
    _current: dict[str, Any] = field(default_factory=dict)
    _warned: bool = False

    def before_timing(self) -> list[str]:
        """Idle check before timed work; returns its problems (also kept for the provenance)."""
        first = self.read(True)
        self.sleep(self.settle_s)
        second = self.read(True)
        found = self._record(window(first, second, self.n_cpus), idle=True)
        self._last = second
        return found

    def after_sample(self) -> dict[str, Any]:
        """The health reading covering the sample just timed (a sample record's ``timing_health``)."""
        now = self.read(False)
        if self._last is None:
            self._last = now
            return dict(self._current)
        if now.clock - self._last.clock >= MIN_WINDOW_S:
            self._record(window(self._last, now, self.n_cpus), idle=False)
            self._last = now
        return dict(self._current)

    def skip_window(self) -> None:
        """Start a new window without assessing the one just ended: untimed work of this
        run's own that runs outside this process (``torch.compile``'s compile workers
        during a warm-up) must not count as another job."""
        self._last = self.read(False)

    def _record(self, win: Window, idle: bool) -> list[str]:
        found = assess(win, self.n_cpus, idle)
        self.checks += 1
        if win.others_cores is not None:
            self.max_others_cores = max(self.max_others_cores or 0.0, win.others_cores)
        if win.load_1m is not None:
            self.max_load_1m = max(self.max_load_1m or 0.0, win.load_1m)
        self.problems += [p for p in found if p not in self.problems]
        self._current = {"others_cores": _round(win.others_cores), "load_1m": _round(win.load_1m),
                         "problems": found}  # fmt: skip
        return found

    def take_warning(self) -> str | None:
        """The terminal warning, the first time a problem is known; None otherwise (and after)."""
        if self._warned or not self.problems:
            return None
        self._warned = True
        return (f"timing may be unreliable: {'; '.join(self.problems)} — speedups measured now can be fiction; "
                f"affected cells are flagged BUSY in the report (rerun on a quiet machine)")  # fmt: skip

    def summary(self, cells: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The provenance's ``timing_health``: run-wide worst numbers, every problem seen,
        and the thresholds used. ``cells``: the summary records (their ``timing_health``)."""
        problems = list(self.problems)
        for cell in cells:
            for p in (cell.get("timing_health") or {}).get("problems", []):
                if p not in problems:
                    problems.append(p)
        return {
            "ok": not problems, "problems": problems, "checks": self.checks, "n_cpus": self.n_cpus,
            "max_others_cores": _round(self.max_others_cores), "max_load_1m": _round(self.max_load_1m),
            "thresholds": {"others_cores": MAX_OTHERS_CORES, "load_1m": "cores + own use",
                           "repeat_spread": MAX_REPEAT_SPREAD, "idle_gpu_util": MAX_IDLE_GPU_UTIL},
        }  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
