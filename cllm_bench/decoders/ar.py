"""``ar``: greedy autoregressive decoding with a KV cache — the reference every method is
compared with (speedup denominator and ``match_ar``)."""

from __future__ import annotations

from dataclasses import dataclass

from cllm_bench.decoders.base import Decoder, OutputBuffer
from cllm_bench.engine import Engine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


@register_decoder("ar")
@dataclass
class ARDecoder(Decoder):
    """One token per forward: prefill, then feed the last token and take the argmax."""

    description = "greedy autoregressive decoding with KV cache (the baseline)"

    def generate(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace = Trace(prompt_len=len(prompt_ids))
        out = OutputBuffer(max_new_tokens, eos_ids)
        token = int(engine.prefill(prompt_ids).argmax())
        trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([token]))
        step_ids = engine.ids_tensor([token])
        while not out.done:
            logits = engine.forward(step_ids)
            next_id = logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1], stays on device
            trace.record("target", fed=1, accepted=out.accept([int(next_id)]))
            step_ids = next_id
        return out.finish(trace)
