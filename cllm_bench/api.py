"""The public extension API: everything a decoder or task written outside the package uses.

``from cllm_bench import register_decoder, Decoder, OutputBuffer, Trace`` (or from
``cllm_bench.api``) — names here are stable; anything else in the package may change.
A worked decoder and task are in ``examples/`` and docs/extending.md; load them with
``--include FILE`` or an entry point (:mod:`cllm_bench.plugins`), and check a decoder
with ``cllm-bench check-decoder NAME`` (:mod:`cllm_bench.conformance`).

Invariants a decoder keeps (``cllm-bench check-decoder`` and the tests verify each):

1. **Shape.** A decoder is a ``@dataclass`` subclass of :class:`Decoder`, registered
   with ``@register_decoder("name")`` above ``@dataclass``; its fields (with defaults)
   are its parameters (``name:key=value``). It implements
   ``generate(engine, prompt_ids, max_new_tokens, eos_ids) -> Trace`` and, when it needs
   more than the target (a draft model, heads), ``prepare(target)``, called once per
   model, untimed.
2. **One step per forward.** Call ``engine.prefill(prompt_ids)`` first and record it as
   ``trace.record("prefill", fed=len(prompt_ids), accepted=...)``; then record exactly
   one ``trace.record("target", fed=k, accepted=a, proposed=p, **info)`` per
   ``engine.forward`` of width k (``"draft"`` for a draft model's forward, which accepts
   nothing). ``engine.forwards`` must equal the number of non-draft steps.
3. **Output only through OutputBuffer.** Offer tokens in order with
   ``taken = out.accept(tokens)`` and record ``accepted=taken``; every output token is
   attributed to the forward that made it certain, so the accepted counts sum to the
   output length. End with ``return out.finish(trace)``.
4. **When to stop.** Loop ``while not out.done``: the buffer stops after the first EOS in
   ``eos_ids`` (kept) or at ``max_new_tokens`` — the one stopping rule every decoder
   shares. Do not spend forwards past it (cap proposals at ``out.remaining - 1``).
5. **Roll the cache back to the accepted text.** Before the next forward,
   ``engine.length`` counts only positions whose KV belongs to prompt + accepted tokens
   (the newest accepted token may be left out and fed next): after verifying a block fed
   at ``start = engine.length``, call ``engine.rollback(start + kept)`` for a contiguous
   prefix, or ``engine.keep(start, offsets)`` for tree-shaped blocks.
6. **Lossless.** A greedy decoder (``lossless = True``, the default) returns exactly the
   tokens ``ar`` returns (accept a proposal only where it equals the target's argmax
   given the verified prefix). A sampling decoder sets ``lossless = False``.
7. **No clocks, no metrics.** The runner times and the metrics module derives every
   number from the trace.
8. **Batch path (optional).** ``supports_batch = True`` plus
   ``generate_batch(engine, prompts, max_new_tokens, eos_ids) -> list[Trace]`` on a
   :class:`BatchedEngine` (``prefill(prompts)`` -> [B, V]; ``forward(ids [B, k], counts)``
   -> [B, k, V]; ``truncate(lengths)`` = per-row rollback; :func:`new_outputs` makes one
   trace and one buffer per prompt). Each row obeys 1-7 and, when lossless, equals
   ``generate`` on that prompt alone.

A task subclasses :class:`Task` (registered with ``@register_task("name")``) and
implements ``samples(limit)``, ``prompt_ids(sample, tokenizer, previous_answers)``
(:func:`encode_chat` / :func:`encode_raw`), ``score(sample, completions)`` (pure, never
raises on bad model output) and ``aggregate(scores)`` (always with an ``accuracy`` key,
None when not computed). Options arrive as :class:`TaskOptions` in ``self.options``.
"""

from __future__ import annotations

from cllm_bench.decoders.base import Decoder, OutputBuffer, build_decoder, greedy_start, greedy_start_batch, new_outputs
from cllm_bench.engines import BatchedEngine, BatchEngine, Engine, SingleEngine
from cllm_bench.errors import DataError, UserError
from cllm_bench.registry import DECODERS, TASKS, register_decoder, register_task
from cllm_bench.tasks.base import Sample, Task, TaskOptions, encode_chat, encode_raw
from cllm_bench.tasks.data_files import read_jsonl
from cllm_bench.trace import JacobiBlock, Step, Trace, TraceError, check_trace

__all__ = [
    "BatchEngine",
    "BatchedEngine",
    "DECODERS",
    "TASKS",
    "DataError",
    "Decoder",
    "Engine",
    "JacobiBlock",
    "OutputBuffer",
    "Sample",
    "SingleEngine",
    "Step",
    "Task",
    "TaskOptions",
    "Trace",
    "TraceError",
    "UserError",
    "build_decoder",
    "check_trace",
    "encode_chat",
    "encode_raw",
    "greedy_start",
    "greedy_start_batch",
    "new_outputs",
    "read_jsonl",
    "register_decoder",
    "register_task",
]
