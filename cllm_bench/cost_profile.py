"""``cllm-bench profile``: measure a cost table (:mod:`cllm_bench.cost_table`) on this device.

For the target model (and each ``--draft`` model) on the engine ``cllm-bench run`` would use
here (dynamic eager on CPU, static + compiled on CUDA, unless told otherwise):

* one forward of ``w`` tokens against a cache of ``c`` positions, for every width x context
  x batch size: prefill ``c`` dummy tokens, then per repeat ``calls`` forwards, each timed
  alone between two device synchronisations and rolled back (rollback not timed); the
  repeat's value is the mean over its calls, the table keeps the median over repeats and
  the spread (max - min). Each repeat visits every point of the context (chain and tree
  widths together) in a shuffled order (:func:`measure_grids`);
* the same with a tree attention mask (batch 1, widths >= 2; the mask of a binary tree:
  token i sees its ancestors, parent (i - 1) // 2) — the shape lookahead/Medusa/EAGLE verify;
* Medusa heads (``--heads SPEC``): one call of the heads on one hidden state, as Medusa runs
  them once per target forward;
* the host overhead of a decode step of our loop: ``ar`` decodes ``overhead_tokens`` tokens
  after a prompt of ``contexts[0]`` tokens (EOS ignored), decode time (prefill apart, as the
  runner times it) / decode steps, minus the table's 1-token forward at the mean context.

Timings on a busy machine are void: run it alone (see docs/predict.md). The runner's
:class:`~cllm_bench.timing_health.HealthMonitor` watches the machine; its summary goes into
the table's ``provenance.timing_health`` and a busy machine is warned about.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from cllm_bench.cost_table import CostTable, Grid, HeadCost, ModelCosts
from cllm_bench.errors import UserError
from cllm_bench.forward_trace import model_identity
from cllm_bench.timing import Stopwatch, synchronize

DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_CONTEXTS = (32, 128, 512)


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure. Every tuple is strictly increasing and positive (:meth:`check`)."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    #: widths of the tree-masked grid (None: ``widths`` >= 2) and of the drafts' grids (None: ``widths``)
    tree_widths: tuple[int, ...] | None = None
    draft_widths: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = (1,)
    repeats: int = 3
    calls: int = 5
    warmup: int = 2
    tree: bool = True
    overhead_tokens: int = 32
    engine: str = "auto"
    compile: str = "auto"

    def check(self) -> None:
        for name in ("widths", "contexts", "batch_sizes"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise UserError(f"--{name.replace('_', '-')} must be a comma list of integers >= 1, got {list(values)}")
        if 1 not in self.widths:
            raise UserError(f"--widths must include 1 (the step overhead is measured against a 1-token forward), got {list(self.widths)}")
        for name in ("tree_widths", "draft_widths"):
            values = getattr(self, name)
            if values is not None and (list(values) != sorted(set(values)) or any(v < 1 for v in values)):
                raise UserError(f"{name} must be strictly increasing integers >= 1, got {list(values)}")
        for name in ("repeats", "calls", "overhead_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")

    @property
    def capacity(self) -> int:
        """KV positions an engine needs: the longest context, the widest block, the ar loop
        (+ the engines' headroom)."""
        from cllm_bench.engines.factory import HEADROOM

        widest = max(self.widths + (self.tree_widths or ()) + (self.draft_widths or ()))
        return max(max(self.contexts) + widest, self.contexts[0] + self.overhead_tokens + 1) + HEADROOM

    def chain_widths(self, draft: bool) -> tuple[int, ...]:
        """Widths of a chain grid: the target's, or a draft's (which always include 1)."""
        if draft and self.draft_widths is not None:
            return tuple(sorted({1, *self.draft_widths}))
        return self.widths

    def tree_grid_widths(self) -> tuple[int, ...]:
        """Widths of the tree-masked grid (a 1-token tree is a chain: never measured)."""
        return tuple(w for w in (self.tree_widths if self.tree_widths is not None else self.widths) if w >= 2)


def binary_tree_mask(width: int) -> torch.Tensor:
    """[width, width] bool: token i attends to itself and its ancestors (parent (i - 1) // 2)."""
    mask = torch.zeros(width, width, dtype=torch.bool)
    for i in range(width):
        j = i
        while True:
            mask[i, j] = True
            if j == 0:
                break
            j = (j - 1) // 2
    return mask


def dummy_ids(n: int, vocab: int) -> list[int]:
    """``n`` token ids cycling over the vocabulary (ids 3.. to stay off special tokens)."""
    span = max(vocab - 3, 1)
    return [3 + (i * 7919) % span for i in range(n)]


def _time_block(run: Callable[[], None], undo: Callable[[], None], device: torch.device, calls: int) -> float:
    """Mean ms of ``calls`` calls of ``run``, each timed alone between two device
    synchronisations and followed by ``undo`` (not timed)."""
    total = 0.0
    for _ in range(calls):
        synchronize(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        total += time.perf_counter() - t0
        undo()
    return total * 1000 / calls


def _time_calls(run: Callable[[], None], undo: Callable[[], None], device: torch.device, settings: ProfileSettings) -> list[float]:
    """ms per call of ``run`` for each repeat (mean over ``calls``), after ``warmup`` calls."""
    for _ in range(settings.warmup):
        run()
        undo()
    return [_time_block(run, undo, device, settings.calls) for _ in range(settings.repeats)]


def _median_spread(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def measure_grids(engine: Any, vocab: int, batch: int, shapes: Sequence[tuple[bool, Sequence[int]]],
                  settings: ProfileSettings, device: torch.device) -> list[Grid]:  # fmt: skip
    """The grids of one engine, measured together: one :class:`Grid` per ``(tree, widths)`` of
    ``shapes`` (tree masks at batch 1 only), on ``engine`` (a
    :class:`~cllm_bench.engines.protocols.SingleEngine` at batch 1, a batched engine otherwise).

    At each context the cache is prefilled once; every point (mask kind x width) gets
    ``warmup`` untimed forwards, then each of the ``repeats`` visits every point once, in an
    order shuffled per repeat (seeded: the same order on every run). On this CPU the cost
    of the same forward drifts by ~15% over minutes; measured point after point, a slow
    phase would fall on one grid or one range of widths and bias their ratio, which is what
    ``predict`` uses. Interleaved, it falls on all points alike (and shows in the spread).
    """
    rng = random.Random(0)
    grids_ms = [[[0.0] * len(widths) for _ in settings.contexts] for _, widths in shapes]
    grids_spread = [[[0.0] * len(widths) for _ in settings.contexts] for _, widths in shapes]
    for ci, context in enumerate(settings.contexts):
        if batch == 1:
            engine.prefill(dummy_ids(context, vocab))
            base = engine.length
            undo: Callable[[], None] = lambda: engine.rollback(base)  # noqa: E731
        else:
            engine.prefill([dummy_ids(context, vocab)] * batch)
            base_lengths = engine.lengths.clone()
            undo = lambda: engine.truncate(base_lengths)  # noqa: E731
        runs: dict[tuple[int, int], Callable[[], Any]] = {}
        for g, (tree, widths) in enumerate(shapes):
            for j, width in enumerate(widths):
                if batch == 1:
                    ids = engine.ids_tensor(dummy_ids(width, vocab))
                    mask = binary_tree_mask(width) if tree else None
                    runs[g, j] = lambda ids=ids, mask=mask: engine.forward(ids, tree_mask=mask)
                else:
                    block = torch.tensor([dummy_ids(width, vocab)] * batch, dtype=torch.long, device=device)
                    runs[g, j] = lambda block=block: engine.forward(block)
        points = list(runs)
        per_repeat: dict[tuple[int, int], list[float]] = {p: [] for p in points}
        with torch.inference_mode():
            for point in points:
                for _ in range(settings.warmup):
                    runs[point]()
                    undo()
            for _ in range(settings.repeats):
                order = list(points)
                rng.shuffle(order)
                for point in order:
                    per_repeat[point].append(_time_block(runs[point], undo, device, settings.calls))
        for (g, j), values in per_repeat.items():
            grids_ms[g][ci][j], grids_spread[g][ci][j] = _median_spread(values)
    return [Grid(batch=batch, tree=tree, widths=tuple(widths), contexts=settings.contexts,
                 ms=tuple(tuple(row) for row in grids_ms[g]), spread_ms=tuple(tuple(row) for row in grids_spread[g]))
            for g, (tree, widths) in enumerate(shapes)]  # fmt: skip


def measure_overhead(engine: Any, vocab: int, chain: Grid, settings: ProfileSettings, device: torch.device) -> tuple[float, float]:
    """(median, spread) in ms of host time per ``ar`` decode step beyond the bare 1-token forward."""
    from cllm_bench.decoders.base import build_decoder

    ar = build_decoder("ar")
    prompt = dummy_ids(settings.contexts[0], vocab)
    steps = settings.overhead_tokens
    bare, _ = chain.cost(1, settings.contexts[0] + steps / 2)
    watch = Stopwatch(device)
    engine.on_prefill_done = watch.mark_prefill
    try:
        with torch.inference_mode():
            for _ in range(settings.warmup):
                ar.generate(engine, prompt, steps + 1, frozenset())
            values = []
            for _ in range(settings.repeats):
                watch.start()
                trace = ar.generate(engine, prompt, steps + 1, frozenset())
                watch.stop()
                decode_steps = len(trace.steps) - 1
                values.append(watch.decode_s * 1000 / decode_steps - bare)
    finally:
        engine.on_prefill_done = None
    return _median_spread(values)


def measure_heads(spec: str, model: Any, settings: ProfileSettings, device: torch.device) -> HeadCost:
    """Time one call of the Medusa heads ``spec`` (as ``medusa:heads=`` takes it) on one hidden state."""
    from cllm_bench.baselines.medusa import build_heads

    heads = build_heads(spec, model, seed=0)
    param = next(heads.parameters())
    hidden = torch.randn(heads.hidden_size, dtype=param.dtype, device=param.device)
    with torch.inference_mode():
        med, spread = _median_spread(_time_calls(lambda: heads(hidden), lambda: None, device, settings))
    return HeadCost(spec, med, spread)


def profile_model(name: str, model: Any, engine: Any, batched: Callable[[int], Any] | None, settings: ProfileSettings,
                  device: torch.device, log: Callable[[str], None], draft: bool = False) -> ModelCosts:  # fmt: skip
    """Every grid of one model plus its step overhead. ``batched(B)``: a batch-B engine
    (None: batch 1 only, e.g. a draft model). ``draft``: a draft model (its chain grid takes
    :attr:`ProfileSettings.draft_widths` when set)."""
    vocab = int(model_identity(model).get("vocab_size") or model.get_output_embeddings().weight.shape[0])
    grids = []
    chain_widths = settings.chain_widths(draft)
    for batch in sorted({1, *settings.batch_sizes}) if batched is not None else (1,):  # batch 1 first: the overhead needs it
        eng = engine if batch == 1 else batched(batch)  # type: ignore[misc]
        shapes: list[tuple[bool, Sequence[int]]] = [(False, chain_widths)]
        tree_widths = list(settings.tree_grid_widths())
        if batch == 1 and settings.tree and tree_widths:
            shapes.append((True, tree_widths))
        what = f"chain widths {list(chain_widths)}" + (f" + tree-masked widths {tree_widths}" if len(shapes) > 1 else "")
        log(f"{name}: batch {batch}, {what} x contexts {list(settings.contexts)}, interleaved")
        grids.extend(measure_grids(eng, vocab, batch, shapes, settings, device))
    log(f"{name}: ar step overhead ({settings.overhead_tokens} tokens)")
    overhead, spread = measure_overhead(engine, vocab, grids[0], settings, device)
    return ModelCosts(name=name, identity=model_identity(model), step_overhead_ms=overhead, grids=tuple(grids),
                      step_overhead_spread_ms=spread)  # fmt: skip


def run_profile(model_spec: str, drafts: Sequence[str], settings: ProfileSettings, dtype: str, device: str,
                log: Callable[[str], None], heads: Sequence[str] = ()) -> CostTable:  # fmt: skip
    """``cllm-bench profile``: load the model (and drafts), measure every grid, return the table.

    ``drafts``: draft specs as ``speculative:draft=...`` takes them (``self:layers=K`` or a
    model spec); each gets batch-1 chain grids and its own step overhead, keyed by the spec.
    ``heads``: Medusa head specs (``random:H`` or a folder), each timed per call.
    """
    from cllm_bench.baselines.speculative import load_draft
    from cllm_bench.engines.factory import build_any_engine, build_companion_engine, build_engine, resolve_options
    from cllm_bench.models import check_model_spec, load_model
    from cllm_bench.provenance import provenance
    from cllm_bench.timing_health import HealthMonitor

    settings.check()
    check_model_spec(model_spec)
    loaded = load_model(model_spec, dtype=dtype, device=device)
    health = HealthMonitor()  # the runner's watch: a busy machine makes the table void, and says so
    health.before_timing()
    options = resolve_options(settings.engine, settings.compile, loaded.device, max_cache_len=settings.capacity)
    engine_name = options.kind + ("+compile" if options.compile else "")
    pad_id = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    engine = build_engine(loaded.model, options)
    batched = lambda b: build_any_engine(loaded.model, options, b, pad_id)  # noqa: E731
    target = profile_model(model_spec, loaded.model, engine, batched, settings, loaded.device, log)
    health.after_sample()
    draft_costs = {}
    for spec in drafts:
        draft_model = load_draft(spec, loaded.model, loaded.tokenizer)
        draft_engine = build_companion_engine(engine, draft_model)
        draft_costs[spec] = profile_model(spec, draft_model, draft_engine, None, settings, loaded.device, log, draft=True)
        health.after_sample()
    head_costs = {}
    for spec in heads:
        log(f"heads {spec}: one call")
        head_costs[spec] = measure_heads(spec, loaded.model, settings, loaded.device)
    health.after_sample()
    warning = health.take_warning()
    if warning is not None:
        log(f"warning: {warning}")
    dtype_name = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    prov = provenance(loaded.device, dtype_name, 0, {"settings": {
        "widths": list(settings.widths), "tree_widths": list(settings.tree_grid_widths()),
        "draft_widths": list(settings.chain_widths(draft=True)), "contexts": list(settings.contexts),
        "batch_sizes": list(settings.batch_sizes),
        "repeats": settings.repeats, "calls": settings.calls, "warmup": settings.warmup, "tree": settings.tree,
        "overhead_tokens": settings.overhead_tokens}, "measured": True, "timing_health": health.summary()})  # fmt: skip
    return CostTable(device=str(loaded.device), device_name=prov["device_name"], dtype=dtype_name, engine=engine_name,
                     target=target, drafts=draft_costs, heads=head_costs, repeats=settings.repeats,
                     provenance=prov)  # fmt: skip


def run_forward_traces(run_dir: Path, flag: str, instead: str) -> list[dict[str, Any]]:
    """The ``forward_trace`` of every sample of a run (``samples.jsonl``), for ``--contexts-from``
    and ``--widths-from`` (``flag``); :class:`UserError` naming the file when it is missing or
    holds no trace (then the user should pass ``instead``)."""
    from cllm_bench.results_io import iter_jsonl

    path = Path(run_dir) / "samples.jsonl"
    if not path.exists():
        raise UserError(f"{path} not found; {flag} takes a folder written by `cllm-bench run`")
    traces = [rec["forward_trace"] for rec in iter_jsonl(path) if isinstance(rec.get("forward_trace"), dict)]
    if not traces:
        raise UserError(f"{run_dir} has no per-forward trace data (no `forward_trace` in samples.jsonl); pass {instead}")
    return traces


def contexts_for_run(run_dir: Path) -> tuple[int, ...]:
    """Three context points up to the longest ``context + width`` of any decode forward in a
    run's ``forward_trace`` records: (max / 8, max / 2, max), at least 1, deduplicated."""
    longest = 0
    for trace in run_forward_traces(run_dir, "--contexts-from", "--contexts"):
        longest = max([longest] + [c + f for k, f, c in zip(trace["kinds"], trace["fed"], trace["context"]) if k != "p"])
    if longest == 0:
        raise UserError(f"{run_dir} has no per-forward trace data (no `forward_trace` in samples.jsonl); pass --contexts")
    return tuple(sorted({max(1, longest // 8), max(1, longest // 2), longest}))


@dataclass(frozen=True)
class RunWidths:
    """The distinct widths of a run's decode forwards, by the grid that prices them."""

    chain: tuple[int, ...]  # target forwards without a tree mask (always holds 1)
    tree: tuple[int, ...]  # target forwards with a tree mask
    draft: tuple[int, ...]  # draft forwards (a draft's prompt pass included)


def widths_for_run(run_dir: Path) -> RunWidths:
    """Every width a run's decode forwards used (``forward_trace``; prefills ``p`` apart, they
    are TTFT), so the profile measures exactly those instead of interpolating between powers
    of two: on a CPU the cost of a forward is not smooth in its width (a GEMM of 2 or 11 rows
    can cost more than one of 8 or 16), and an interpolated curve misprices decoders whose
    widths fall between the points (docs/predict.md, "Validation")."""
    chain, tree, draft = {1}, set(), set()
    for trace in run_forward_traces(run_dir, "--widths-from", "--widths"):
        for kind, fed in zip(trace["kinds"], trace["fed"]):
            if kind == "d":
                draft.add(int(fed))
            elif kind == "t":
                (tree if trace.get("tree") and fed > 1 else chain).add(int(fed))
    return RunWidths(tuple(sorted(chain)), tuple(sorted(tree)), tuple(sorted(draft)))
