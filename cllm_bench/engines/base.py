"""Plumbing shared by the engines: binding the model, the cache keyword, prompt tensors,
the prefill signal. No engine state lives here (each engine builds its own cache in its
own ``__init__``; nothing here calls a method a subclass overrides)."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

from cllm_bench.engines import kv_cache
from cllm_bench.models import ModelPlacement


class EngineCore(ModelPlacement):
    """The model (put in eval mode), its config, the forward counter and the prefill callback.

    on_prefill_done: optional callback invoked right after the prefill forward (the
        runner uses it to time TTFT with device synchronisation; decoders never time).
    """

    def __init__(self, model: PreTrainedModel, on_prefill_done: Callable[[], None] | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self.on_prefill_done = on_prefill_done
        self.forwards = 0
        self._cache_keyword = kv_cache.cache_keyword(model)  # read once: "cache" or "past_key_values"
        self._cache: object = None

    def _cache_kwarg(self) -> dict[str, object]:
        """``{keyword: cache}`` for a forward call, under the name this transformers expects."""
        return {self._cache_keyword: self._cache}

    @property
    def cache(self) -> object:
        """The live cache object (for decoders that run a second model view, e.g. tests)."""
        return self._cache

    def _signal_prefill(self) -> None:
        """Tell the runner's clock that the prefill forward is done."""
        if self.on_prefill_done is not None:
            self.on_prefill_done()

    def _prefill_done(self, logits: torch.Tensor) -> torch.Tensor:
        """Single-sequence engines: count the prefill forward, signal the runner's clock,
        return the last position's logits [V] of ``logits`` [1, T, V]."""
        self.forwards += 1
        self._signal_prefill()
        return logits[0, -1]

    @torch.inference_mode()
    def ids_tensor(self, ids: list[int]) -> torch.Tensor:
        """[1, len(ids)] long tensor on the model's device."""
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def prompt_tensor(self, prompt_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """The prompt as a [1, T] long tensor on the device (T >= 1)."""
        ids = prompt_ids if isinstance(prompt_ids, torch.Tensor) else self.ids_tensor(list(prompt_ids))
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        if ids.shape[1] == 0:
            raise ValueError("cannot prefill an empty prompt")
        return ids
