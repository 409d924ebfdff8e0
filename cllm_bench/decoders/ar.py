"""``ar``: greedy autoregressive decoding with a KV cache — the reference every method is
compared with (speedup denominator and ``match_ar``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cllm_bench.decoders.base import Decoder, OutputBuffer, greedy_chain, greedy_start, new_outputs
from cllm_bench.errors import UserError
from cllm_bench.engines.protocols import BatchedEngine, SingleEngine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


@register_decoder("ar")
@dataclass
class ARDecoder(Decoder):
    """One token per forward: prefill, then feed the last token and take the argmax.

    sync_every: tokens decoded on the device between two reads by the host (default 1:
    every token is read as it is made). With ``k > 1`` the loop queues ``k`` forwards, each
    fed the previous one's argmax without leaving the device, then reads the ``k`` tokens
    at once and applies the one stop rule (:class:`OutputBuffer`) to them in order: tokens
    after an EOS are discarded and the cache is rolled back to what ``k = 1`` leaves, so the
    output is the same token for token. The forwards past an EOS (at most ``k - 1``) are
    real work and are recorded (``accepted = 0``). A chunk never passes the budget. On a GPU
    this lets the host run ahead of the device (no synchronisation per token); on a CPU
    there is nothing to overlap.
    """

    description = "greedy autoregressive decoding with KV cache (the baseline)"
    supports_batch = True
    cache_headroom = 1  # one token per forward, a chunk never passes the budget

    sync_every: int = 1

    def __post_init__(self) -> None:
        if int(self.sync_every) < 1:
            raise UserError(f"ar: sync_every must be >= 1, got {self.sync_every}")
        self.sync_every = int(self.sync_every)

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace, out, token = greedy_start(engine, prompt_ids, max_new_tokens, eos_ids)
        step_ids = engine.ids_tensor([token])
        if self.sync_every > 1:
            return self._generate_chunked(engine, step_ids, trace, out)
        while not out.done:
            next_id = engine.forward_greedy(step_ids)  # [1, 1], stays on device
            trace.record("target", fed=1, accepted=out.accept([int(next_id)]))
            step_ids = next_id
        return out.finish(trace)

    def _generate_chunked(self, engine: SingleEngine, step_ids: torch.Tensor, trace: Trace, out: OutputBuffer) -> Trace:
        """The ``sync_every > 1`` loop: chunks of forwards on the device, one host read per chunk."""
        while not out.done:
            start = engine.length  # the cache holds everything accepted but the newest token
            chunk = greedy_chain(engine, step_ids, min(self.sync_every, out.remaining))  # [1, k]
            step_ids = chunk[:, -1:]
            taken = 0
            for token in chunk[0].tolist():  # the chunk's one device -> host copy
                accepted = out.accept([token])
                taken += accepted
                trace.record("target", fed=1, accepted=accepted)
            if taken < chunk.shape[1]:  # stopped inside the chunk: forget the forwards past the stop
                engine.rollback(start + taken)
        return out.finish(trace)

    def generate_batch(
        self, engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """All rows advance one token per batched forward; a finished row feeds padding
        (``counts[b] = 0``) until every row is done. One device->host copy per step."""
        traces, outs = new_outputs(prompts, max_new_tokens, eos_ids)
        step_ids = engine.prefill(prompts).argmax(dim=-1, keepdim=True)  # [B, 1]
        for b, token in enumerate(step_ids[:, 0].tolist()):
            traces[b].record("prefill", fed=len(prompts[b]), accepted=outs[b].accept([token]))
        while not all(o.done for o in outs):
            counts = [0 if o.done else 1 for o in outs]
            step_ids = engine.forward(step_ids, counts)[:, -1].argmax(dim=-1, keepdim=True)
            for b, token in enumerate(step_ids[:, 0].tolist()):
                if counts[b]:
                    traces[b].record("target", fed=1, accepted=outs[b].accept([token]))
        return [o.finish(t) for o, t in zip(outs, traces)]
