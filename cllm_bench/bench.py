"""``cllm-bench bench``: our engine and decoders against HF ``generate``, in one process.

On the same device, prompts and budget it times HF ``generate`` eager (dynamic cache),
HF ``generate`` with a static cache + ``torch.compile`` (CUDA by default), our ``ar`` and
any ``--decoders``, on our chosen engine (static + compiled on CUDA, eager on CPU).
Warm-up runs are excluded from timing and reported as compile/warm-up time. EOS is
ignored by default (``--stop-at-eos`` to honour it) so every method generates exactly
``--max-new-tokens`` tokens, as serving benchmarks do.

Per method it reports tokens/s (median over repeats), ms per target forward, the ratios
to HF eager and HF compiled, and achieved memory bandwidth: bytes read per forward
(weights + the KV cache attended) / time per forward, as a share of the device's peak.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from cllm_bench import metrics
from cllm_bench.compile_cache import describe_compile_cache
from cllm_bench.decoders.base import Decoder, batched_decoder_names, build_decoder
from cllm_bench.engines.factory import build_any_engine, resolve_options
from cllm_bench.engines.protocols import AnyEngine, EngineOptions, is_batched
from cllm_bench.errors import UserError
from cllm_bench.models import DEFAULT_MODEL, LoadedModel, load_model
from cllm_bench.provenance import now_iso, provenance
from cllm_bench.results_io import write_json_atomic
from cllm_bench.timing import synchronize
from cllm_bench.timing_health import HealthMonitor

#: peak HBM bandwidth in bytes/s by device-name fragment (vendor datasheets)
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12, "A100": 1.55e12,
                  "L40S": 0.864e12, "A10G": 0.6e12, "RTX 4090": 1.008e12}  # fmt: skip

#: the regression guard's floor: our ``ar`` over HF ``generate`` eager on a CPU
AR_FLOOR_VS_HF_EAGER = 1.0

BENCH_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number, with a docstring and tests.",
    "Explain how a hash map works and implement one in Python with open addressing.",
    "A train leaves at 3pm at 60 mph and another at 4pm at 80 mph from the same station. When does the second catch up? Think step by step.",
    "Write a SQL query that lists the five customers with the highest total order value, then explain it.",
    "Summarise the causes of the French Revolution in five bullet points.",
    "Write a bash script that finds the ten largest files under a directory.",
    "A shop sells pens at 3 for $2. How much do 18 pens cost? Explain your reasoning.",
    "Describe the difference between a process and a thread, with an example in C.",
]  # fmt: skip


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    decoders: list[str] = field(default_factory=list)
    max_new_tokens: int = 256
    repeats: int = 3
    warmup: int = 1
    num_prompts: int = 2
    dtype: str = "auto"
    device: str = "auto"
    engine: str = "auto"  # auto | dynamic | static
    compile: str = "auto"  # auto | on | off
    hf_compiled: str = "auto"  # auto (CUDA only) | on | off
    stop_at_eos: bool = False
    output_path: str = "results"
    batch_size: int = 1  # > 1: each pass decodes batch_size prompts together (left padding)


def bench_texts(cfg: BenchConfig) -> list[str]:
    """The prompts of one pass: ``num_prompts`` of :data:`BENCH_PROMPTS` at batch 1; at batch B,
    B prompts cycling through all of them (distinct up to B = len(BENCH_PROMPTS))."""
    if cfg.batch_size > 1:
        return [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(cfg.batch_size)]
    return BENCH_PROMPTS[: max(1, cfg.num_prompts)]


def peak_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value
    return None


def bytes_per_forward(model: Any, context_len: float, batch: int = 1) -> float:
    """Weight bytes + KV bytes attended for one forward of ``batch`` rows at ``context_len``
    cached positions each (weights are read once per forward whatever the batch)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * heads * head_dim * elem * context_len
    return weights + kv * batch


@dataclass
class Measurement:
    name: str
    tokens: int
    forwards: int
    times: list[float]
    warmup_s: float
    outputs: list[list[int]]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s

    @property
    def ms_per_forward(self) -> float:
        return 1000 * self.median_s / self.forwards if self.forwards else float("nan")


def measure(name: str, decoder: Decoder, engine: AnyEngine, prompts: list[list[int]], cfg: BenchConfig,
            eos: frozenset[int], after_warmup: Callable[[], None] | None = None) -> Measurement:  # fmt: skip
    """Warm up (untimed, includes compilation), call ``after_warmup``, then time ``repeats``
    passes over all prompts."""
    with torch.inference_mode():
        return _measure(name, decoder, engine, prompts, cfg, eos, after_warmup)


def _measure(name: str, decoder: Decoder, engine: AnyEngine, prompts: list[list[int]], cfg: BenchConfig,
             eos: frozenset[int], after_warmup: Callable[[], None] | None) -> Measurement:  # fmt: skip
    def one_pass() -> list[Any]:
        if is_batched(engine):  # all prompts in one batch
            return decoder.generate_batch(engine, prompts, cfg.max_new_tokens, eos)  # type: ignore[arg-type]
        return [decoder.generate(engine, p, cfg.max_new_tokens, eos) for p in prompts]  # type: ignore[arg-type]

    t0 = time.perf_counter()
    for _ in range(max(cfg.warmup, 0)):
        one_pass()
    synchronize(engine.device)
    warm = time.perf_counter() - t0
    if after_warmup is not None:
        after_warmup()
    times, outputs, tokens, forwards = [], [], 0, 0
    for r in range(cfg.repeats):
        synchronize(engine.device)
        start = time.perf_counter()
        traces = one_pass()
        synchronize(engine.device)
        times.append(time.perf_counter() - start)
        if r == 0:
            outputs = [t.tokens for t in traces]
            tokens = sum(len(t.tokens) for t in traces)
            per_row = [metrics.target_forwards(t) for t in traces]
            # a batched forward serves every row at once: the batch took as many forwards as its longest row
            forwards = max(per_row) if is_batched(engine) else sum(per_row)
    return Measurement(name, tokens, forwards, times, warm, outputs)


def check_batchable(cfg: BenchConfig) -> None:
    """At batch > 1 every decoder needs a batched path; say which do not, before any loading."""
    if cfg.batch_size <= 1:
        return
    unbatched = [d for d in ["ar", *cfg.decoders] if not build_decoder(d).supports_batch]
    if unbatched:
        raise UserError(
            f"decoders without a batched path at --batch-size {cfg.batch_size}: {', '.join(unbatched)}; "
            f"batched decoders: {', '.join(batched_decoder_names())}"
        )


def bench_prompts(cfg: BenchConfig, loaded: LoadedModel) -> list[list[int]]:
    """Token ids of :func:`bench_texts`, through the chat template when the model has one."""
    tok = loaded.tokenizer
    texts = bench_texts(cfg)
    if getattr(tok, "chat_template", None):
        return [list(tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                add_generation_prompt=True), add_special_tokens=False)["input_ids"]) for t in texts]  # fmt: skip
    return [list(tok(t)["input_ids"]) for t in texts]


def bench_capacity(prompts: list[list[int]], cfg: BenchConfig, headroom: int) -> int:
    """Static-cache positions for the bench prompts: longest prompt + budget + ``headroom``
    (a decoder's :attr:`~cllm_bench.decoders.base.Decoder.cache_headroom`); at batch > 1 twice
    prompt + budget, room for the holes left between compactions (at most 1.5x the longest
    row + slack). A static cache's attention reads every position, so this is kept tight."""
    longest = max(len(p) for p in prompts) + cfg.max_new_tokens
    return (2 * longest if cfg.batch_size > 1 else longest) + headroom


def measure_all(cfg: BenchConfig, loaded: LoadedModel, console: Console) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time HF generate, ``ar`` and ``cfg.decoders`` at ``cfg.batch_size`` on a loaded model.

    Returns the result rows (:func:`bench_rows`) and the facts of this measurement
    (engine, compile, prompt lengths, batch size) for the provenance.
    """
    device = loaded.device
    tok = loaded.tokenizer
    prompts = bench_prompts(cfg, loaded)
    eos = loaded.eos_ids if cfg.stop_at_eos else frozenset()
    batch = cfg.batch_size
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    options = resolve_options(cfg.engine, cfg.compile, device)  # capacity: per decoder, below
    kind, comp = options.kind, options.compile
    hf_comp = cfg.hf_compiled == "on" or (cfg.hf_compiled == "auto" and device.type == "cuda")
    compile_cache = describe_compile_cache() if (comp or hf_comp) else None  # read before anything compiles
    health = HealthMonitor()
    health.before_timing()
    plan: list[tuple[str, str, str]] = [("hf eager", "hf", "dynamic")]
    if hf_comp:
        plan.append(("hf static+compile", "hf:cache=static,compile=true", "dynamic"))
    for spec in ["ar", *[d for d in cfg.decoders if d != "ar"]]:
        plan.append((f"{build_decoder(spec).label} ({kind}{'+compile' if comp else ''})", spec, kind))
    results: list[Measurement] = []
    methods: list[str] = []
    # one engine per (kind, capacity): decoders of the same headroom share its compiled graphs
    engines: dict[tuple[str, int], AnyEngine] = {}
    for name, spec, engine_kind in plan:
        decoder = build_decoder(spec)
        decoder.prepare(loaded)
        capacity = bench_capacity(prompts, cfg, decoder.cache_headroom) if engine_kind == "static" else 0
        if (engine_kind, capacity) not in engines:
            engine_options = (replace(options, max_cache_len=capacity) if engine_kind == options.kind
                              else EngineOptions(kind="dynamic"))  # fmt: skip
            engines[engine_kind, capacity] = build_any_engine(loaded.model, engine_options, batch, pad_id)
        engine = engines[engine_kind, capacity]
        console.print(f"timing [bold]{name}[/] ..." + (f" (batch {batch})" if batch > 1 else ""))
        results.append(measure(name, decoder, engine, prompts, cfg, eos, after_warmup=health.skip_window))
        methods.append(name if name.startswith("hf ") else decoder.label)
        health.after_sample()
    if (warning := health.take_warning()) is not None:
        console.print(f"[yellow]warning:[/] {warning}")
    rows = bench_rows(results, loaded, prompts, cfg, device)
    for row, method in zip(rows, methods):
        hf = method.startswith("hf ")
        row["method"] = method
        row["compiled"] = method == "hf static+compile" if hf else comp
        row["engine"] = ("hf static" if row["compiled"] else "hf dynamic") if hf else kind
        row["engine"] += "+compile" if row["compiled"] else " eager"
    facts = {"engine": kind, "compile": comp, "prompt_tokens": [len(p) for p in prompts], "batch_size": batch,
             "compile_cache": compile_cache.as_dict() if compile_cache else None,
             "timing_health": health.summary()}  # fmt: skip
    facts["regression_guard"] = regression_guard(rows, device.type, facts["timing_health"])
    return rows, facts


def run_bench(cfg: BenchConfig, console: Console) -> Path:
    check_batchable(cfg)
    loaded: LoadedModel = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    device = loaded.device
    rows, facts = measure_all(cfg, loaded, console)
    doc = {
        "provenance": provenance(device, str(loaded.dtype).replace("torch.", ""), 0, {
            "time": now_iso(), "config": cfg.__dict__, **facts,
            "peak_bandwidth_bytes_per_s": peak_bandwidth(device)}),
        "results": rows,
    }  # fmt: skip
    out_dir = Path(cfg.output_path)
    path = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, doc)
    console.print(bench_table(rows, doc["provenance"]))
    console.print(engine_line(facts))
    if (guard := facts["regression_guard"]) is not None:
        console.print(f"[bold red]flag {guard['flag']}:[/] {guard['why']}")
    from cllm_bench.peers import bench_table as peers_table

    if (peers := peers_table(rows)) is not None:  # ours next to its HF counterpart, when both ran
        console.print(peers)
    return path


def regression_guard(rows: list[dict[str, Any]], device_type: str, health: dict[str, Any]) -> dict[str, Any] | None:
    """The flag ``bench`` raises when our ``ar`` ran below HF ``generate`` eager on a CPU.

    On a CPU the forward is nearly all of a token's time and our loop does no more host
    work than HF's, so ``ar`` below :data:`AR_FLOOR_VS_HF_EAGER` times HF eager means
    something: the machine was busy (``health``: the run's ``timing_health``), the two were
    within run-to-run noise (their min-max tokens/s overlap), the machine drifted between
    the two measurements, or the harness regressed; the flag says which it can tell.
    Returns None when there is nothing to flag (not a CPU, a row missing, or ar at/above
    the floor); else ``{"flag", "ratio", "why"}``.
    """
    ar = next((r for r in rows if r.get("method") == "ar"), None)
    eager = next((r for r in rows if r.get("method") == "hf eager"), None)
    if device_type != "cpu" or ar is None or eager is None or ar["ratio_vs_hf_eager"] is None:
        return None
    ratio = ar["ratio_vs_hf_eager"]
    if ratio >= AR_FLOOR_VS_HF_EAGER:
        return None
    if not health.get("ok", True):
        why = f"the machine was busy ({'; '.join(health.get('problems', []))}): rerun on a quiet machine"
    elif ar["tokens_per_s_max"] >= eager["tokens_per_s_min"]:
        why = (f"within run-to-run noise: ar {ar['tokens_per_s_min']:.1f}-{ar['tokens_per_s_max']:.1f} tok/s overlaps "
               f"HF eager {eager['tokens_per_s_min']:.1f}-{eager['tokens_per_s_max']:.1f}; rerun with more --repeats")
    else:
        why = (f"our ar ran at {ratio:.2f}x HF generate eager on a quiet machine, below the spread of both "
               f"methods' repeats. They are timed one after the other, so a drift of the machine between them "
               f"can explain a few percent; if a rerun agrees, the harness's decode loop or engine regressed "
               f"(profile it: scripts/profile_host_work.py)")
    return {"flag": "ar_below_hf_eager", "ratio": round(ratio, 4), "why": why}


def engine_line(facts: dict[str, Any]) -> str:
    """One line saying what our decoders ran on: engine, eager or compiled, and the compile cache."""
    text = f"our decoders ran on the {facts['engine']} engine, " + ("compiled" if facts["compile"] else "eager")
    cache = facts.get("compile_cache")
    if cache:
        state = f"warm, {cache['entries_before']} entries" if cache["warm"] else "cold: this process paid the compile"
        text += f"; compile cache {cache['dir']} ({state})"
    return text


def bench_rows(results: list[Measurement], loaded: LoadedModel, prompts: list[list[int]], cfg: BenchConfig,
               device: torch.device) -> list[dict[str, Any]]:  # fmt: skip
    by_name = {m.name: m for m in results}
    eager = by_name.get("hf eager")
    compiled = by_name.get("hf static+compile")
    peak = peak_bandwidth(device)
    context = statistics.fmean(len(p) for p in prompts) + cfg.max_new_tokens / 2
    per_forward_bytes = bytes_per_forward(loaded.model, context, cfg.batch_size)
    ref_out = by_name[results[0].name].outputs
    rows = []
    for m in results:
        bw = per_forward_bytes / (m.ms_per_forward / 1000) if m.forwards else None
        rows.append({
            "decoder": m.name,
            "tokens_per_s": m.tokens_per_s,
            "tokens_per_s_min": m.tokens / max(m.times), "tokens_per_s_max": m.tokens / min(m.times),
            "ms_per_forward": m.ms_per_forward,
            "tokens_per_forward": m.tokens / m.forwards if m.forwards else None,
            "ratio_vs_hf_eager": m.tokens_per_s / eager.tokens_per_s if eager else None,
            "ratio_vs_hf_compiled": m.tokens_per_s / compiled.tokens_per_s if compiled else None,
            "bandwidth_bytes_per_s": bw,
            "bandwidth_share": (bw / peak) if (bw and peak) else None,
            "warmup_compile_s": m.warmup_s,
            # the warm-up's cost beyond its own decoding: compilation (and first-call setup)
            "warmup_overhead_s": max(m.warmup_s - cfg.warmup * m.median_s, 0.0) if cfg.warmup else m.warmup_s,
            "generated_tokens": m.tokens,
            "match_hf_eager": m.outputs == ref_out,
            "repeats": len(m.times),
            "batch_size": cfg.batch_size,
        })  # fmt: skip
    return rows


def bench_table(rows: list[dict[str, Any]], prov: dict[str, Any]) -> Table:
    from cllm_bench.summary_table import fmt

    batch = prov.get("batch_size", 1)
    table = Table(title=f"cllm-bench bench — {prov['device_name']}, {prov['dtype']}, batch {batch}")
    for col in ("method", "tokens/s", "ms/forward", "tok/forward", "vs HF eager", "vs HF compiled",
                "bandwidth", "warm-up s", "same tokens"):  # fmt: skip
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["decoder"], fmt(r["tokens_per_s"], ".1f"), fmt(r["ms_per_forward"], ".2f"),
                      fmt(r["tokens_per_forward"]), fmt(r["ratio_vs_hf_eager"], ".2f", "x"),
                      fmt(r["ratio_vs_hf_compiled"], ".2f", "x"),
                      fmt(r["bandwidth_share"] * 100 if r["bandwidth_share"] else None, ".1f", "%"),
                      fmt(r["warmup_compile_s"], ".1f"), "yes" if r["match_hf_eager"] else "no")  # fmt: skip
    return table
