"""``hf``: transformers ``generate`` (greedy) as the external reference.

It runs the same model through the library everybody uses, so ``ar`` == ``hf`` token
for token proves our loop, and ``bench`` compares speeds. The trace has one record per
generated token (``generate`` does one forward per token); TTFT is taken when the first
new token reaches a streamer.

Two variants are transformers' own versions of our multi-token decoders, the external
references for them (:mod:`cllm_bench.baselines.hf_assisted` counts their forwards):

* ``hf:assistant=SPEC[,k=N]`` — assisted generation (``generate(assistant_model=...)``),
  greedy, the reference for ``speculative:draft=SPEC,k=N``. SPEC resolves like
  ``speculative:draft=`` (``self``, ``self:layers=K``, a model spec with the target's
  tokenizer). ``k=N`` fixes N assistant tokens per round (``num_assistant_tokens=N``,
  schedule ``"constant"``, no confidence early stop); without ``k`` transformers' defaults
  apply (docs/decoders.md).
* ``hf:prompt_lookup=N[,ngram=M]`` — prompt lookup (``prompt_lookup_num_tokens=N``,
  ``max_matching_ngram_size=M``), the reference for ``prompt_lookup``.

Both run at batch 1 on transformers' dynamic cache (its assisted loop crops the cache
and refuses batches), so they take no ``cache``/``compile`` and have no batched path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig
from transformers.generation.streamers import BaseStreamer

from cllm_bench.baselines.hf_assisted import (
    ForwardLog,
    PutRecorder,
    assistant_view,
    counted,
    set_schedule,
    trace_from_log,
)
from cllm_bench.baselines.speculative import check_same_vocabulary, load_draft, parse_draft
from cllm_bench.decoders.base import Decoder, OutputBuffer
from cllm_bench.engines.batch import pad_batch
from cllm_bench.engines.protocols import BatchedEngine, SingleEngine
from cllm_bench.errors import UserError
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


def compile_everywhere() -> CompileConfig:
    """transformers' default compile settings, with its flag for compiling on any device.

    ``generate`` compiles the forward of a static cache by itself on CUDA/XPU only; on a
    CPU ``compile=true`` would silently run eager. transformers' ``CompileConfig`` carries
    a per-instance flag, ``_compile_all_devices``, for exactly this case (its own CPU tests
    set it), so ``hf:cache=static,compile=true`` means compiled on every device.
    """
    config = CompileConfig()
    config._compile_all_devices = True
    return config


@register_decoder("hf")
@dataclass
class HFGenerateDecoder(Decoder):
    """Greedy ``model.generate``; ``cache=static`` and ``compile=true`` select HF's fast path.

    assistant: a draft spec (as ``speculative:draft=``) -> HF assisted generation.
    k: the assistant's tokens per round, constant schedule (0 = transformers' defaults).
    prompt_lookup: N > 0 -> HF prompt lookup with N candidate tokens.
    ngram: the longest n-gram prompt lookup matches (0 = transformers' default, 2).
    """

    cache: str = "dynamic"
    compile: bool = False
    assistant: str = ""
    k: int = 0
    prompt_lookup: int = 0
    ngram: int = 0

    description = (
        "transformers generate(), greedy (external reference); assistant=SPEC[,k=N]: its assisted generation "
        "(reference for speculative); prompt_lookup=N: its prompt lookup (reference for prompt_lookup)"
    )
    supports_batch = True

    def __post_init__(self) -> None:
        for name in ("k", "prompt_lookup", "ngram"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.assistant and self.prompt_lookup:
            raise ValueError("assistant= and prompt_lookup= are two different methods; give one of them")
        if self.k and not self.assistant:
            raise ValueError(
                "k is the assistant's tokens per round; give assistant=SPEC with it (e.g. hf:assistant=self:layers=4,k=5)"
            )
        if self.ngram and not self.prompt_lookup:
            raise ValueError("ngram is prompt lookup's longest match; give prompt_lookup=N with it")
        if self.assisted and (self.cache != "dynamic" or self.compile):
            raise ValueError(
                "assisted generation and prompt lookup run on transformers' dynamic cache; drop cache=/compile="
            )
        if self.assistant:
            source, _ = parse_draft(self.assistant)  # a malformed self:... fails here
            if source != "self":
                from cllm_bench.models import check_model_spec

                check_model_spec(source)  # a missing folder/file fails before any cell runs
        self.supports_batch = not self.assisted  # type: ignore[misc]  # HF's assisted loop is batch 1 only
        self._assistant: Any = None  # a view of the draft with its own generation_config
        self._assistant_config: Any = None  # that generation_config as loaded (reset before every call)
        self._assistant_for: Any = None  # the target model the assistant was built for

    @property
    def assisted(self) -> bool:
        """True for the assisted-generation and prompt-lookup variants."""
        return bool(self.assistant or self.prompt_lookup)

    def validate_target(self, target: Any) -> None:
        """Load the assistant for ``target`` (a LoadedModel) and check that it shares its
        vocabulary and tokenizer: right after the target is loaded, before any cell runs.
        (It loads weights: the check needs the assistant's tokenizer for every kind of spec.)"""
        if self.assistant:
            self._load_assistant(target.model, getattr(target, "tokenizer", None))

    def prepare(self, target: Any) -> None:
        if self.assistant:
            self._load_assistant(target.model, getattr(target, "tokenizer", None))

    def _load_assistant(self, target_model: Any, tokenizer: Any = None) -> None:
        if self._assistant is not None and self._assistant_for is target_model:
            return
        try:
            model = load_draft(self.assistant, target_model, tokenizer)
        except UserError as exc:
            raise UserError(f"{self.label}: {exc}") from None
        self._use_assistant(model, target_model)

    def attach_assistant(self, draft_model: Any, target_model: Any) -> None:
        """Use an already built ``draft_model`` for ``target_model`` (tests); vocabulary checked."""
        try:
            check_same_vocabulary(target_model, draft_model, name=type(draft_model).__name__)
        except UserError as exc:
            raise UserError(f"{self.label}: {exc}") from None
        self._use_assistant(draft_model, target_model)

    def _use_assistant(self, model: Any, target_model: Any) -> None:
        self._assistant = assistant_view(model)
        self._assistant_config = self._assistant.generation_config
        self._assistant_for = target_model

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
        if self.compile:
            config.compile_config = compile_everywhere()
        return config

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        config = self.generation_config(max_new_tokens, eos_ids, min(eos_ids) if eos_ids else 0)
        ids = engine.ids_tensor(prompt_ids)
        if self.assisted:
            return self.generate_assisted(engine, ids, config, max_new_tokens, eos_ids)
        with torch.inference_mode():
            generated = engine.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=_FirstTokenSignal(engine.on_prefill_done),
            )
        return trace_of(prompt_ids, generated[0, ids.shape[1] :].tolist(), max_new_tokens, eos_ids)

    def generate_assisted(
        self, engine: SingleEngine, ids: torch.Tensor, config: GenerationConfig, max_new_tokens: int, eos_ids: frozenset[int]
    ) -> Trace:
        """One assisted / prompt-lookup ``generate`` on ``ids`` [1, T] with its forwards counted."""
        kwargs: dict[str, Any] = {}
        assistant = None
        if self.assistant:
            if self._assistant is None or self._assistant_for is not engine.model:
                self._load_assistant(engine.model)
            assistant = self._assistant
            set_schedule(assistant, self._assistant_config, self.k)
            kwargs["assistant_model"] = assistant
        else:
            config.prompt_lookup_num_tokens = self.prompt_lookup
            if self.ngram:
                config.max_matching_ngram_size = self.ngram
        log = ForwardLog()
        with torch.inference_mode(), counted(engine.model, assistant, log):
            generated = engine.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=PutRecorder(log, engine.on_prefill_done),
                **kwargs,
            )
        prompt_len = ids.shape[1]
        return trace_from_log(log, prompt_len, generated[0, prompt_len:].tolist(), max_new_tokens, eos_ids)

    def generate_batch(
        self, engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """``generate`` on the left-padded batch with its attention mask (HF's own batching)."""
        if self.assisted:
            raise UserError(f"{self.label}: transformers' assisted generation runs at batch size 1 only")
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
