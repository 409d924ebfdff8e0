"""``hf``: transformers ``generate`` (greedy) as the external reference.

It runs the same model through the library everybody uses, so ``ar`` == ``hf`` token
for token proves our loop, and ``bench`` compares speeds. The trace has one record per
generated token (``generate`` does one forward per token); TTFT is taken when the first
new token reaches a streamer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from cllm_bench.batch_engine import pad_batch
from cllm_bench.decoders.base import Decoder, OutputBuffer
from cllm_bench.engine import Engine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


class _FirstTokenSignal(BaseStreamer):
    """Calls ``callback`` once, when ``generate`` emits its first new token."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.calls = 0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2 and self.callback is not None:  # call 1 is the prompt
            self.callback()

    def end(self) -> None:
        pass


@register_decoder("hf")
@dataclass
class HFGenerateDecoder(Decoder):
    """Greedy ``model.generate``; ``cache=static`` and ``compile=true`` select HF's fast path."""

    cache: str = "dynamic"
    compile: bool = False

    description = "transformers generate(), greedy (external reference)"
    supports_batch = True

    def generation_config(self, max_new_tokens: int, eos_ids: frozenset[int], pad_id: int) -> GenerationConfig:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(eos_ids),  # [] = never stop early (None would fall back to the model's EOS)
            pad_token_id=pad_id,
        )
        if self.cache != "dynamic":
            config.cache_implementation = self.cache
        # HF compiles the forward by itself for a static cache on an accelerator; honour the flag.
        config.disable_compile = not self.compile
        return config

    def generate(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        config = self.generation_config(max_new_tokens, eos_ids, min(eos_ids) if eos_ids else 0)
        ids = engine.ids_tensor(prompt_ids)
        with torch.inference_mode():
            generated = engine.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=_FirstTokenSignal(engine.on_prefill_done),
            )
        return trace_of(prompt_ids, generated[0, ids.shape[1] :].tolist(), max_new_tokens, eos_ids)

    def generate_batch(
        self, engine: Any, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """``generate`` on the left-padded batch with its attention mask (HF's own batching)."""
        ids, mask = pad_batch(prompts, engine.pad_id, left=True)
        config = self.generation_config(max_new_tokens, eos_ids, engine.pad_id)
        with torch.inference_mode():
            generated = engine.model.generate(
                input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device), generation_config=config
            )
        new = generated[:, ids.shape[1] :].tolist()
        return [trace_of(p, row, max_new_tokens, eos_ids) for p, row in zip(prompts, new)]


def trace_of(prompt_ids: list[int], new_tokens: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
    """The trace of one ``generate`` output: one forward per token (prefill first)."""
    out = OutputBuffer(max_new_tokens, eos_ids)
    trace = Trace(prompt_len=len(prompt_ids))
    taken = out.accept(new_tokens)
    if taken:
        trace.record("prefill", fed=len(prompt_ids), accepted=1)
        for _ in range(taken - 1):
            trace.record("target", fed=1, accepted=1)
    return out.finish(trace)
