"""``ar``: greedy autoregressive decoding with a KV cache — the reference every method is
compared with (speedup denominator and ``match_ar``)."""

from __future__ import annotations

from dataclasses import dataclass


from cllm_bench.decoders.base import Decoder, greedy_start, new_outputs
from cllm_bench.engines.protocols import BatchedEngine, SingleEngine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


@register_decoder("ar")
@dataclass
class ARDecoder(Decoder):
    """One token per forward: prefill, then feed the last token and take the argmax."""

    description = "greedy autoregressive decoding with KV cache (the baseline)"
    supports_batch = True

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace, out, token = greedy_start(engine, prompt_ids, max_new_tokens, eos_ids)
        step_ids = engine.ids_tensor([token])
        while not out.done:
            logits = engine.forward(step_ids)
            next_id = logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1], stays on device
            trace.record("target", fed=1, accepted=out.accept([int(next_id)]))
            step_ids = next_id
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
