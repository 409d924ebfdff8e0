"""The model runner: owns a causal LM and its KV cache.

Decoders talk to the model only through the engine protocol
(:class:`~cllm_bench.engines.protocols.SingleEngine`); :class:`Engine` is its reference:

* :meth:`Engine.prefill` — run the prompt into an empty cache, return last-position logits;
* :meth:`Engine.forward` — run a block of k tokens at explicit positions, optionally with
  a k x k ``tree_mask`` saying which of the *new* tokens each new token may attend to
  (every new token always sees the whole committed cache). The block is appended to the
  cache;
* :meth:`Engine.forward_greedy` — the same forward, returning only the argmax token ids
  (what greedy decoders read);
* :meth:`Engine.rollback` / :meth:`Engine.keep` — keep only what was accepted: a
  contiguous prefix (rollback to a length) or scattered block positions (tree decoders).

Invariant: after a decoder's step, ``engine.length`` equals the number of positions whose
KV is exact for the accepted text (prompt + accepted tokens, possibly minus the newest
token, which is fed at the next step).

``engine.forwards`` counts every forward of this engine (prefill included); decoders
record one trace step per forward, and tests compare the two.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from transformers import PreTrainedModel

from cllm_bench.engines import kv_cache
from cllm_bench.engines.base import EngineCore
from cllm_bench.engines.protocols import EngineOptions


class Engine(EngineCore):
    """Eager engine over a transformers dynamic KV cache (the reference path); a
    :class:`~cllm_bench.engines.protocols.SingleEngine`.

    model: a causal LM (``AutoModelForCausalLM``); put in eval mode here.
    on_prefill_done: optional callback invoked right after the prefill forward (the
        runner uses it to time TTFT with device synchronisation; decoders never time).
    """

    batched: ClassVar[bool] = False

    def __init__(self, model: PreTrainedModel, on_prefill_done: Callable[[], None] | None = None) -> None:
        super().__init__(model, on_prefill_done)
        self.options = EngineOptions(kind="dynamic")
        self._cache = kv_cache.new_dynamic_cache(self.config)

    # -- properties ------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Positions currently in the KV cache."""
        return kv_cache.cache_length(self._cache)

    # -- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: empty cache, forward counter to 0."""
        self._cache = kv_cache.new_dynamic_cache(self.config)
        self.forwards = 0

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run the prompt into a fresh cache. Returns logits of the last position, shape [V]."""
        self.reset()
        ids = self.prompt_tensor(prompt_ids)
        out = self.model(input_ids=ids, **self._cache_kwarg(), use_cache=True, logits_to_keep=1)
        return self._prefill_done(out.logits)

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
        output_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Append a block of k tokens to the cache and return their logits.

        ids: [1, k] long. positions: [1, k] long absolute positions (default: the next
        k positions after the cache). tree_mask: [k, k] bool, ``tree_mask[i, j]`` = new
        token i may attend to new token j (default: causal). Returns logits [1, k, V]
        (and the last hidden states [1, k, H] when ``output_hidden``).
        """
        past = self.length
        k = ids.shape[1]
        if positions is None:
            positions = torch.arange(past, past + k, device=ids.device).unsqueeze(0)
        mask = None if tree_mask is None else self._additive_mask(past, tree_mask)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            **self._cache_kwarg(),
            use_cache=True,
            output_hidden_states=output_hidden,
        )
        self.forwards += 1
        if output_hidden:
            return out.logits, out.hidden_states[-1]
        return out.logits

    @torch.inference_mode()
    def forward_greedy(
        self, ids: torch.Tensor, positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward`, returning the argmax at each new position: [1, k] long."""
        return self.forward(ids, positions, tree_mask).argmax(dim=-1)

    def _additive_mask(self, past: int, tree_mask: torch.Tensor) -> torch.Tensor:
        """[1, 1, k, past + k] float mask: 0 where attention is allowed, dtype-min elsewhere."""
        k = tree_mask.shape[0]
        allowed = torch.ones(k, past + k, dtype=torch.bool, device=self.device)
        allowed[:, past:] = tree_mask.to(self.device, torch.bool)
        mask = torch.zeros(k, past + k, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[None, None]

    # -- cache commit ----------------------------------------------------------------
    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached positions (accepted prefix), drop the rest."""
        kv_cache.truncate(self._cache, length)

    def keep(self, start: int, offsets: list[int] | torch.Tensor) -> None:
        """Keep positions [0, start) and ``start + offsets`` of the last block, compacted in order."""
        off = offsets if isinstance(offsets, torch.Tensor) else torch.tensor(offsets, dtype=torch.long)
        kv_cache.keep_positions(self._cache, start, off.to(self.device))
