"""``cllm-bench run``: models x decoders x tasks, measured the same way, resumable.

Measurement discipline:
  * per (model, task) every decoder gets the same prompts; ``ar`` always runs first —
    it is the reference for ``speedup`` and ``match_ar``;
  * model/decoder loading, tokenization and scoring happen outside timed regions;
  * ``warmup`` generations per (model, decoder) are run and discarded before timing;
  * each sample is generated ``repeats`` times with the device synchronised around the
    timed region; the median is reported and the per-repeat spread kept;
  * TTFT (prefill) is timed apart from decoding;
  * the machine is watched before and during timed work (:mod:`cllm_bench.timing_health`:
    other processes' CPU, load, idle GPU use, repeat spread); what it sees goes into each
    sample record, each cell (``timing_health``) and the provenance, and is warned about once.

Before anything is written, everything a user can get wrong is checked (values, device,
config-file types, model specs, decoder paths, ``--task-args`` keys, the run folder); the
run folder is then locked (:class:`~cllm_bench.run_folder.RunFolderLock`) until the run ends.

Result files (under ``output_path``): ``.cllm-bench.lock`` (the lock a running run holds;
its pid inside), ``run_config.json`` (the arguments; a rerun with
other arguments into the same folder is refused), ``samples.jsonl`` (one line per
model x decoder x task x sample, appended durably — the resume log), ``summary.json``
(one record per model x decoder x task + provenance, rewritten atomically); both records
are derived from the traces and timings by :mod:`cllm_bench.run_records`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import resource
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cllm_bench.by_category import category_results
from cllm_bench.decoders.base import Decoder, build_decoder
from cllm_bench.engines.factory import EngineFor, build_engine, resolve_options
from cllm_bench.engines.protocols import EngineOptions, SingleEngine
from cllm_bench.errors import UserError
from cllm_bench.forward_trace import forward_trace
from cllm_bench.models import DEFAULT_MODEL, LoadedModel, check_model_spec, load_model
from cllm_bench.provenance import now_iso, provenance, sandbox_provenance
from cllm_bench.records import SAMPLE_REQUIRED_KEYS
from cllm_bench.distributed import ProcessGroup
from cllm_bench.results_io import (
    JsonlAppender,
    read_complete_jsonl,
    read_json,
    read_jsonl_repairing,
    write_json_atomic,
    write_jsonl_atomic,
)
from cllm_bench.run_checks import check_task_args, check_values
from cllm_bench.run_records import TimedGeneration, cell_summary, sample_record
from cllm_bench.run_folder import LOCK_FILE, RunFolderLock, check_output_path
from cllm_bench.task_lookup import build_task as build_task_named
from cllm_bench.tasks.base import Sample, Task, TaskOptions
from cllm_bench.timing import Stopwatch
from cllm_bench.timing_health import HealthMonitor
from cllm_bench.trace import Trace, check_trace


@dataclass
class RunConfig:
    """Everything that defines a run (and its resume identity)."""

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    decoders: list[str] = field(default_factory=lambda: ["ar", "jacobi:n=16"])
    tasks: list[str] = field(default_factory=lambda: ["humaneval"])
    limit: int | None = 5
    max_new_tokens: int | None = 128
    repeats: int = 1
    warmup: int = 1
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    data_dir: str | None = None
    prompt_style: str = "auto"
    engine: str = "auto"
    compile: str = "auto"
    task_args: dict[str, str] = field(default_factory=dict)
    allow_code_execution: bool = False
    require_isolation: bool = False
    log_samples: bool = False
    exclude_degenerate: bool = False
    judge: str | None = None
    judge_max_new_tokens: int = 512
    output_path: str | None = None

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a rerun to resume into the same folder."""
        ident = asdict(self)
        for volatile in ("output_path", "log_samples", "require_isolation"):
            ident.pop(volatile)
        return ident

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]

    def short_name(self) -> str:
        model = Path(self.models[0]).name.replace(".gguf", "")
        return f"{model}-{'+'.join(self.tasks)}".replace("/", "_").replace(":", "_")[:60]


def decoder_order(specs: list[str]) -> list[Decoder]:
    """Build decoders, ``ar`` first (added when missing), duplicates (same label) removed."""
    built = [build_decoder(s) for s in specs]
    if not any(d.registered_name == "ar" for d in built):
        built.insert(0, build_decoder("ar"))
    built.sort(key=lambda d: d.registered_name != "ar")
    seen: set[str] = set()
    out = []
    for d in built:
        if d.label not in seen:
            seen.add(d.label)
            out.append(d)
    return out


def resolve_output_dir(config: RunConfig, results_root: Path = Path("results")) -> Path:
    """The run folder: the given one, else an unfinished run with the same arguments
    under ``results/`` (resume), else a new ``results/<timestamp>-<name>/``."""
    if config.output_path:
        return Path(config.output_path)
    if results_root.is_dir():
        for cfg in sorted(results_root.glob("*/run_config.json")):
            try:
                saved = json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if saved.get("identity_hash") == config.identity_hash() and not saved.get("finished"):
                return cfg.parent
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return results_root / f"{stamp}-{config.short_name()}"


def check_run_folder(out: Path, config: RunConfig) -> bool:
    """Read-only: raise :class:`UserError` unless ``out`` is usable for this run — absent, an
    empty folder (a lock file aside), or a run folder with the same arguments (resume).
    Returns True when ``out`` already holds this run's ``run_config.json``."""
    check_output_path(out)
    cfg_path = out / "run_config.json"
    if cfg_path.exists():
        saved = read_json(cfg_path, "run config")
        if not isinstance(saved, dict) or saved.get("identity_hash") != config.identity_hash():
            theirs = saved.get("config", {}) if isinstance(saved, dict) else {}
            theirs = theirs if isinstance(theirs, dict) else {}
            diff = sorted(k for k, v in config.identity().items() if theirs.get(k) != v)
            raise UserError(
                f"{out} holds a run with different arguments ({', '.join(diff) or 'unknown'} differ); "
                f"pass another --output-path or rerun with the same arguments to resume"
            )
        return True
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise UserError(f"{out} exists and is not a cllm-bench run folder; pass another --output-path")
    return False


def claim_output_dir(out: Path, config: RunConfig) -> None:
    """Refuse a folder that holds a run with other arguments; record ours otherwise
    (call it holding the folder's :class:`~cllm_bench.run_folder.RunFolderLock`)."""
    if not check_run_folder(out, config):
        write_json_atomic(out / "run_config.json",
                          {"identity_hash": config.identity_hash(), "config": asdict(config), "finished": False})  # fmt: skip


# ------------------------------------------------------------------------- per sample
def timed_generate(
    decoder: Decoder, engine: SingleEngine, prompt: list[int], max_new: int, eos: frozenset[int], repeats: int
) -> TimedGeneration:
    """Generate ``repeats`` times; keep the first trace and every timing."""
    watch = Stopwatch(engine.device)
    engine.on_prefill_done = watch.mark_prefill
    first: Trace | None = None
    decode, ttft = [], []
    for _ in range(max(repeats, 1)):
        watch.start()
        with torch.inference_mode():
            trace = decoder.generate(engine, prompt, max_new, eos)
        watch.stop()
        decode.append(watch.decode_s)
        ttft.append(watch.ttft_s)
        if first is None:
            first = trace
            check_trace(trace, max_new, eos)
        elif trace.tokens != first.tokens:
            raise RuntimeError(f"decoder {decoder.label} is not deterministic: repeats produced different outputs")
    engine.on_prefill_done = None
    assert first is not None
    return TimedGeneration(first, decode, ttft)


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


# ------------------------------------------------------------------------- the run
def build_task(name: str, config: RunConfig) -> Task:
    """A task instance; ``lm_eval:<task>`` wraps any lm-evaluation-harness generation task."""
    options = TaskOptions(
        data_dir=Path(config.data_dir).expanduser() if config.data_dir else None,
        prompt_style=config.prompt_style,  # type: ignore[arg-type]
        allow_code_execution=config.allow_code_execution,
        extra=dict(config.task_args),
    )
    return build_task_named(name, options)


class Judge:
    """A judge model for MT-bench quality: greedy ``ar`` generation on the judge's chat template.

    Loaded once per run, on first use; its generations are never timed.
    """

    def __init__(self, spec: str, config: RunConfig) -> None:
        self.spec = spec
        self.config = config
        self._loaded: LoadedModel | None = None

    def __call__(self, messages: list[dict[str, str]]) -> str:
        from cllm_bench.tasks.base import encode_chat

        if self._loaded is None:
            self._loaded = load_model(self.spec, dtype=self.config.dtype, device=self.config.device)
        loaded = self._loaded
        if getattr(loaded.tokenizer, "chat_template", None):
            ids = encode_chat(loaded.tokenizer, messages)
        else:
            ids = list(loaded.tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"])
        engine = build_engine(loaded.model, EngineOptions())  # the judge: eager, dynamic cache
        with torch.inference_mode():
            trace = build_decoder("ar").generate(engine, ids, self.config.judge_max_new_tokens, loaded.eos_ids)
        return loaded.tokenizer.decode(trace.tokens, skip_special_tokens=True)


def run_matrix(config: RunConfig, console: Console, results_root: Path = Path("results")) -> Path:
    """Run the whole matrix; returns the run folder (holding the result files).

    Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) every process runs its
    shard of each task's samples and process 0 merges the logs and writes the summary.
    """
    group = ProcessGroup.from_env()
    # validate everything a user can get wrong before anything is written (run_checks.py)
    check_values(config)
    decoders = decoder_order(config.decoders)
    for spec in config.models + ([config.judge] if config.judge else []):
        check_model_spec(spec)
    tasks = {name: build_task(name, config) for name in config.tasks}
    check_task_args(config.task_args, tasks)
    task_samples = {name: task.samples(config.limit) for name, task in tasks.items()}
    for name, samples in task_samples.items():
        if not samples:
            raise UserError(f"task {name} produced no samples (check --data-dir and --limit)")
    judge = Judge(config.judge, config) if config.judge else None
    executes = config.allow_code_execution and any(task.requires_execution for task in tasks.values())
    # warns once (process 0) or refuses (every process) when there is no OS-level sandbox
    sandbox = sandbox_provenance(executes, config.require_isolation, None if group.is_main else io.StringIO())
    if group.world > 1 and not config.output_path:
        raise UserError("several processes need one run folder: pass --output-path")
    out = resolve_output_dir(config, results_root)
    if group.is_main:  # the other processes check after the barrier in _run_locked: before it,
        check_run_folder(out, config)  # process 0 may be mid-write (a temp file) in the folder
    # the first write: the folder and its lock (held by process 0 until the run ends)
    lock = RunFolderLock(out) if group.is_main else None
    with lock if lock is not None else contextlib.nullcontext():
        return _run_locked(config, console, group, out, decoders, tasks, task_samples, judge, sandbox)


def _run_locked(config: RunConfig, console: Console, group: ProcessGroup, out: Path, decoders: list[Decoder],
                tasks: dict[str, Task], task_samples: dict[str, list[Sample]], judge: Judge | None,
                sandbox: dict[str, Any]) -> Path:  # fmt: skip
    """:func:`run_matrix` after validation, holding the run folder's lock (process 0);
    ``sandbox``: the isolation record for the provenance."""
    if group.is_main:
        claim_output_dir(out, config)
        done = read_jsonl_repairing(out / "samples.jsonl", SAMPLE_REQUIRED_KEYS)
    group.barrier()
    if not group.is_main:
        check_run_folder(out, config)  # the folder exists now: only checks the arguments
        done = read_complete_jsonl(out / "samples.jsonl", SAMPLE_REQUIRED_KEYS)
    log_path = out / ("samples.jsonl" if group.world == 1 else f"samples.rank{group.rank}.jsonl")
    done += [r for p in sorted(out.glob("samples.rank*.jsonl")) if p != log_path
             for r in read_complete_jsonl(p, SAMPLE_REQUIRED_KEYS)]  # fmt: skip
    done += read_jsonl_repairing(log_path, SAMPLE_REQUIRED_KEYS) if group.world > 1 else []
    if done and group.is_main:
        console.print(f"[yellow]resuming[/] {out}: {len(done)} finished samples kept")
    index = {(r["model"], r["decoder"], r["task"], r["sample_id"]): r for r in done}
    start = now_iso()
    torch.manual_seed(config.seed)
    memory: dict[tuple[str, str, str], float | None] = {}
    device = None
    progress_console = console if group.is_main else Console(quiet=True)
    health = HealthMonitor()
    with JsonlAppender(log_path) as log, _progress(progress_console) as progress:
        for model_spec in config.models:
            console.print(f"loading model [bold]{model_spec}[/] ...")
            loaded = load_model(model_spec, dtype=config.dtype, device=group.device(config.device))
            device = loaded.device
            for decoder in decoders:  # a head or draft that does not fit fails before any cell
                decoder.validate_target(loaded)
            # shared by all cells: compiled graphs are reused
            engine = EngineFor(loaded.model, resolve_options(config.engine, config.compile, loaded.device))
            health.before_timing()
            warn_timing_health(health, progress_console)
            for task_name, task in tasks.items():
                shard = group.shard(task_samples[task_name])
                max_new = config.max_new_tokens or task.default_max_new_tokens
                for decoder in decoders:
                    _run_cell(loaded, task, task_name, shard, decoder, max_new, config, index, log, progress, engine,
                              judge, health)  # fmt: skip
                    memory[(model_spec, decoder.label, task_name)] = peak_memory_mb(loaded.device)
                    if group.world == 1:  # a live summary while a single process runs
                        results = summarize(config, decoders, tasks, task_samples, index, memory)
                        write_json_atomic(out / "summary.json",
                                          _summary_doc(config, device, start, results, False, health, sandbox))  # fmt: skip
            del loaded, engine
    assert device is not None
    group.barrier()
    if group.is_main:
        if group.world > 1:
            index = merge_rank_logs(out, config, decoders, task_samples)
        results = summarize(config, decoders, tasks, task_samples, index, memory)
        write_json_atomic(out / "summary.json", _summary_doc(config, device, start, results, True, health, sandbox))
        cfg = read_json(out / "run_config.json", "run config")
        cfg["finished"] = True
        write_json_atomic(out / "run_config.json", cfg)
    group.barrier()
    return out


def ordered_keys(config: RunConfig, decoders: list[Decoder], task_samples: dict[str, list[Sample]]):
    """Every (model, decoder, task, sample id) of the matrix, in single-process order."""
    for model in config.models:
        for task_name, samples in task_samples.items():
            for decoder in decoders:
                for sample in samples:
                    yield (model, decoder.label, task_name, sample.id)


def summarize(config: RunConfig, decoders: list[Decoder], tasks: dict[str, Task],
              task_samples: dict[str, list[Sample]], index: dict, memory: dict) -> list[dict[str, Any]]:  # fmt: skip
    """One summary record per finished (model, decoder, task) cell, ``ar`` first per model x task."""
    results = []
    for model in config.models:
        for task_name, samples in task_samples.items():
            ar_tps = None
            ar_records: list[dict[str, Any]] | None = None
            for decoder in decoders:
                records = [index.get((model, decoder.label, task_name, s.id)) for s in samples]
                if any(r is None for r in records):
                    continue
                mem = memory.get((model, decoder.label, task_name))
                rec = cell_summary(records, tasks[task_name], decoder, ar_tps, config.exclude_degenerate, mem)
                if decoder.registered_name == "ar":
                    ar_tps = rec["tokens_per_s"]
                    rec["speedup"] = 1.0
                    ar_records = records
                by_category = category_results(records, ar_records)
                if by_category is not None:
                    rec["by_category"] = by_category
                results.append(rec)
    return results


def merge_rank_logs(out: Path, config: RunConfig, decoders: list[Decoder], task_samples: dict) -> dict:
    """Process 0: fold every ``samples.rank<R>.jsonl`` into ``samples.jsonl`` (single-process
    order, written atomically), then remove the rank logs."""
    records = read_complete_jsonl(out / "samples.jsonl", SAMPLE_REQUIRED_KEYS)
    rank_logs = sorted(out.glob("samples.rank*.jsonl"))
    for path in rank_logs:
        records += read_complete_jsonl(path, SAMPLE_REQUIRED_KEYS)
    index = {(r["model"], r["decoder"], r["task"], r["sample_id"]): r for r in records}
    merged = [index[k] for k in ordered_keys(config, decoders, task_samples) if k in index]
    write_jsonl_atomic(out / "samples.jsonl", merged)
    for path in rank_logs:
        path.unlink()
    return index


def _summary_doc(config: RunConfig, device: torch.device, start: str, results: list[dict], final: bool,
                 health: HealthMonitor, sandbox: dict[str, Any]) -> dict:  # fmt: skip
    prov = provenance(device, config.dtype, config.seed, {
        "start_time": start, "end_time": now_iso() if final else None, "complete": final,
        "repeats": config.repeats, "warmup": config.warmup, "max_new_tokens": config.max_new_tokens,
        "limit": config.limit, "config": asdict(config), "timing_health": health.summary(results), "sandbox": sandbox,
    })  # fmt: skip
    return {"provenance": prov, "results": results}


def warn_timing_health(health: HealthMonitor, console: Console) -> None:
    """Print the busy-machine warning the first time the monitor has one (once per run)."""
    message = health.take_warning()
    if message is not None:
        console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )  # fmt: skip


def _run_cell(
    loaded: LoadedModel, task: Task, task_name: str, samples: list[Sample], decoder: Decoder, max_new: int,
    config: RunConfig, index: dict, log: JsonlAppender, progress: Progress, engine: EngineFor,
    judge: Judge | None = None, health: HealthMonitor | None = None,
) -> list[dict[str, Any]]:
    """All samples of one model x task x decoder: warm-up, timed repeats, scoring, logging.

    ``health`` watches the machine around each timed sample; its reading goes into the
    sample record's ``timing_health`` (and a busy machine is warned about once)."""
    model = loaded.spec
    decoder.prepare(loaded)
    tok = loaded.tokenizer
    bar = progress.add_task(f"{task_name} · {decoder.label}", total=len(samples))
    pending = [s for s in samples if (model, decoder.label, task_name, s.id) not in index]
    progress.advance(bar, len(samples) - len(pending))
    for sample in pending[: config.warmup] if pending else []:
        ids = task.prompt_ids(sample, tok, [])
        with torch.inference_mode():
            decoder.generate(engine.fit(len(ids) + max_new), ids, min(max_new, 32), loaded.eos_ids)
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    for sample in pending:
        ar_rec = index.get((model, "ar", task_name, sample.id)) if decoder.registered_name != "ar" else None
        prompts, gens, completions = [], [], []
        for turn in range(task.n_turns(sample)):
            # every decoder gets the same conversation: later turns follow ar's earlier answers
            history = (ar_rec["completions"][:turn] if ar_rec else completions[:turn])
            ids = task.prompt_ids(sample, tok, history)
            gen = timed_generate(decoder, engine.fit(len(ids) + max_new), ids, max_new, loaded.eos_ids, config.repeats)
            prompts.append(ids)
            gens.append(gen)
            completions.append(tok.decode(gen.trace.tokens, skip_special_tokens=True))
        sample_health = health.after_sample() if health is not None else None
        if judge is not None and hasattr(task, "score_with_judge"):
            score = task.score_with_judge(sample, completions, judge, task.judge_config(judge.spec))
        else:
            score = task.score(sample, completions)
        log_prompts = [tok.decode(p) for p in prompts] if config.log_samples else None
        rec = sample_record(model, decoder, task_name, sample, prompts, gens, completions, score, ar_rec, log_prompts)
        rec["forward_trace"] = forward_trace([g.trace for g in gens], decoder, loaded.model)  # for `predict`
        if decoder.registered_name == "ar":
            rec["match_ar"], rec["first_divergence"] = True, None
        if sample_health is not None:
            rec["timing_health"] = sample_health
            warn_timing_health(health, progress.console)
        log.append(rec)
        index[(model, decoder.label, task_name, sample.id)] = rec
        progress.advance(bar)
    return [index[(model, decoder.label, task_name, s.id)] for s in samples]
