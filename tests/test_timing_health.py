"""The busy-machine detector on injected readings (nothing here is timed)."""

from __future__ import annotations

import pytest

from cllm_bench.report.facts import cell_flags
from cllm_bench.timing_health import (
    CpuTimes,
    HealthMonitor,
    Reading,
    assess,
    cell_health,
    parse_proc_stat,
    parse_self_stat,
    read_cpu_times,
    repeat_spread,
    window,
)

N = 2  # cores of the imagined machine; 100 ticks per core-second


def reading(clock: float, total: int, idle: int, own: int, load: float = 0.1, gpu: float | None = None) -> Reading:
    return Reading(clock=clock, load_1m=load, cpu=CpuTimes(total=total, idle=idle, own=own), gpu_util=gpu)


def test_parse_proc_files():
    stat = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 1 2 3 4\n"
    total, idle = parse_proc_stat(stat)
    assert total == 100 + 5 + 50 + 800 + 20 + 1 + 2 + 3  # guest columns are inside user/nice already
    assert idle == 820
    own = "4242 (python my (odd) name) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16"
    # after ')': state R, then fields 4.. ; utime..cstime are fields 14-17 -> 11, 12, 13, 14
    assert parse_self_stat(own) == 11 + 12 + 13 + 14
    real = read_cpu_times()
    assert real is None or (real.total > 0 and 0 <= real.idle <= real.total and real.own >= 0)


def test_other_processes_cpu_in_cores():
    # 1 s on 2 cores = 200 ticks; 150 busy, of which 40 ours -> others 110 ticks = 1.1 cores
    win = window(reading(0, 1000, 500, 10), reading(1, 1200, 550, 50), N)
    assert win.own_cores == pytest.approx(0.4)
    assert win.others_cores == pytest.approx(1.1)
    assert assess(win, N) == ["other processes used 1.1 of 2 CPU cores"]
    quiet = window(reading(0, 1000, 500, 10), reading(1, 1200, 655, 50), N)  # 5 ticks of others
    assert quiet.others_cores == pytest.approx(0.05) and assess(quiet, N) == []


def test_load_beyond_our_own_use_and_gpu_only_when_idle():
    ours_only = window(reading(0, 0, 0, 0), reading(1, 200, 0, 200, load=2.9), N)  # we use both cores
    assert ours_only.others_cores == 0 and assess(ours_only, N) == []
    crowded = window(reading(0, 0, 0, 0), reading(1, 200, 100, 100, load=4.5), N)
    assert any("1-min load 4.5" in p for p in assess(crowded, N))
    gpu = window(reading(0, 0, 200, 0, gpu=80.0), reading(1, 200, 400, 0, gpu=80.0), N)
    assert assess(gpu, N, idle=True) == ["GPU 80% busy before timed work"]
    assert assess(gpu, N, idle=False) == []  # our own kernels keep it busy during timed work


def test_missing_counters_give_no_verdict():
    win = window(Reading(0, None, None), Reading(1, None, None), N)
    assert win.others_cores is None and assess(win, N) == []


def test_repeat_spread_and_cell_health():
    assert repeat_spread([0.1]) is None and repeat_spread([0.0, 1.0]) is None
    assert repeat_spread([0.005, 0.076, 0.01]) == pytest.approx(15.2)
    quiet = [{"decode_s_repeats": [1.0, 1.1], "timing_health": {"others_cores": 0.1, "problems": []}}] * 3
    assert cell_health(quiet)["ok"] is True
    spread = quiet + [{"decode_s_repeats": [0.005, 0.076]}]
    health = cell_health(spread)
    assert health["ok"] is False and health["spread_samples"] == 1 and health["max_repeat_spread"] > 15
    busy = quiet + [{"decode_s_repeats": [1.0], "timing_health": {"others_cores": 1.8, "problems": ["x busy"]}}]
    health = cell_health(busy)
    assert health["ok"] is False and health["busy_samples"] == 1 and health["problems"] == ["x busy"]
    assert health["max_others_cores"] == 1.8


class Script:
    """Readings handed out in order (the monitor's ``read``), and a fake clock for ``sleep``."""

    def __init__(self, readings: list[Reading]) -> None:
        self.readings = list(readings)
        self.gpu_asked: list[bool] = []
        self.slept = 0.0

    def read(self, gpu: bool) -> Reading:
        self.gpu_asked.append(gpu)
        return self.readings.pop(0)

    def sleep(self, seconds: float) -> None:
        self.slept += seconds


def test_monitor_before_and_during_and_warns_once():
    script = Script([
        reading(0.0, 0, 0, 0), reading(0.5, 100, 95, 0),       # idle check: quiet
        reading(0.6, 120, 105, 10),                             # after sample 1: window too short, no verdict
        reading(1.5, 300, 105, 60),   # after sample 2, window from 0.5 s: busy 190 - ours 60 = 130 ticks = 1.3 cores
        reading(2.5, 500, 295, 60),   # after sample 3: others 10 ticks, quiet again
    ])  # fmt: skip
    monitor = HealthMonitor(n_cpus=N, read=script.read, sleep=script.sleep)
    assert monitor.before_timing() == [] and script.slept == 0.5
    assert script.gpu_asked == [True, True]
    assert monitor.take_warning() is None
    assert monitor.after_sample()["problems"] == []
    second = monitor.after_sample()
    assert second["others_cores"] == pytest.approx(1.3) and second["problems"]
    warning = monitor.take_warning()
    assert warning is not None and "1.3 of 2 CPU cores" in warning and "BUSY" in warning
    assert monitor.after_sample()["problems"] == []
    assert monitor.take_warning() is None  # once per run
    summary = monitor.summary()
    assert summary["ok"] is False and summary["max_others_cores"] == pytest.approx(1.3)
    assert summary["problems"] == ["other processes used 1.3 of 2 CPU cores"]


def test_skip_window_leaves_untimed_work_unjudged():
    """Compile workers during a warm-up are our own work outside this process: the window
    they ran in is skipped, and the timed window after it is judged alone."""
    script = Script([
        reading(0.0, 0, 0, 0), reading(0.5, 100, 95, 0),        # idle check: quiet
        reading(3.0, 600, 95, 100),    # end of warm-up: compile workers (400 ticks not ours) -> skipped
        reading(4.0, 800, 100, 295),   # timed sample: others 0 ticks
    ])  # fmt: skip
    monitor = HealthMonitor(n_cpus=N, read=script.read, sleep=script.sleep)
    monitor.before_timing()
    monitor.skip_window()
    assert monitor.after_sample()["problems"] == []
    assert monitor.summary()["ok"] is True


def test_busy_cell_is_flagged_in_the_report():
    record = {"n_samples": 20, "repeats": 3, "speedup": 13.5, "lossless": True, "match_ar": 1.0,
              "timing_health": {"ok": False, "problems": ["other processes used 1.8 of 2 CPU cores"]}}  # fmt: skip
    flags = {f.code: f.message for f in cell_flags(record)}
    assert "1.8 of 2" in flags["BUSY"]
    record["timing_health"] = {"ok": True, "problems": []}
    assert "BUSY" not in {f.code for f in cell_flags(record)}


def test_run_records_timing_health_everywhere(tiny_model_dir, tmp_path, capsys):
    """A real (tiny) run: every sample, every cell and the provenance carry the readings;
    the report shows them. Values depend on the machine, so only their shape is checked."""
    import json

    from cllm_bench.cli import main
    from test_cli_run import run_args

    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, out, "--repeats", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    prov = summary["provenance"]["timing_health"]
    assert {"ok", "problems", "checks", "n_cpus", "thresholds"} <= set(prov) and prov["checks"] >= 1
    for cell in summary["results"]:
        assert {"ok", "busy_samples", "spread_samples", "problems"} <= set(cell["timing_health"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all("timing_health" in s for s in samples)
    terminal = capsys.readouterr().out
    assert terminal.count("timing may be unreliable") <= 1  # warned at most once
    assert main(["report", str(out), "--format", "md"]) == 0
    assert "timing health" in (out / "report" / "report.md").read_text()
