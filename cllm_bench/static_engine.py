"""The fast engine path: a preallocated (static) KV cache, optionally ``torch.compile``d.

Same interface and invariants as :class:`~cllm_bench.engine.Engine`, so every decoder runs
on it unchanged; ``tests/test_static_engine.py`` checks that every decoder produces the
same tokens on both paths.

* The cache is a transformers ``StaticCache`` of ``max_cache_len`` positions written in
  place; rollback is a length update (no copy), tree acceptance an in-place gather.
* Every forward gets an explicit additive mask over the whole cache
  ([1, 1, b, max_cache_len]): committed positions visible, the new block as causal or
  tree mask, everything after it hidden. Stale entries past the length are never seen.
* With ``compile=True`` the decode forward is ``torch.compile``d (``mode`` default
  "reduce-overhead": CUDA graphs on GPU). To bound the number of graphs, a block of k
  tokens is padded to the next size in ``buckets``; pad tokens attend only to
  themselves, sit after the real tokens and are dropped by resetting the length, so
  padding changes no real logit. The prefill (variable length) runs eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

from cllm_bench import kv_cache
from cllm_bench.engine import Engine

DEFAULT_BUCKETS = (1, 8, 16, 32, 64, 128, 256)  # few shapes = few compiled graphs; padding is ~free on GPU


def bucket_size(k: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= k (k itself when larger than every bucket)."""
    for b in buckets:
        if b >= k:
            return b
    return k


class StaticEngine(Engine):
    """Engine over a static cache; see the module docstring.

    max_cache_len: capacity in positions (prompt + generated + the widest block + padding).
    compile: compile the decode forward; mode: the ``torch.compile`` mode.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_cache_len: int,
        compile: bool = False,
        mode: str = "reduce-overhead",
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        pad_to_buckets: bool | None = None,
        on_prefill_done: Callable[[], None] | None = None,
    ) -> None:
        self.max_cache_len = max_cache_len
        self.compile = compile
        self.buckets = buckets if (compile if pad_to_buckets is None else pad_to_buckets) else ()
        self._length = 0
        self._columns: torch.Tensor | None = None
        super().__init__(model, on_prefill_done)
        self._decode_forward = (
            torch.compile(self._forward_logits, mode=mode, fullgraph=True, dynamic=False) if compile else self._forward_logits
        )

    # -- state -----------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self) -> None:
        if getattr(self, "_cache", None) is None:
            self._cache = kv_cache.new_static_cache(self.config, self.max_cache_len)
        kv_cache.set_static_length(self._cache, 0)
        self._length = 0
        self.forwards = 0

    @property
    def length(self) -> int:
        return self._length

    @torch.inference_mode()
    def _set_length(self, length: int) -> None:
        self._length = length
        kv_cache.set_static_length(self._cache, length)

    def rollback(self, length: int) -> None:
        if length > self._length or length < 0:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {length}")
        self._set_length(length)

    @torch.inference_mode()
    def keep(self, start: int, offsets: list[int] | torch.Tensor) -> None:
        off = offsets if isinstance(offsets, torch.Tensor) else torch.tensor(offsets, dtype=torch.long)
        off = off.to(self.device)
        kv_cache.static_keep_positions(self._cache, start, off)
        self._set_length(start + off.numel())

    # -- masks -----------------------------------------------------------------------
    def _mask(self, block: torch.Tensor) -> torch.Tensor:
        """[1, 1, b, max_cache_len] additive mask for a b-token block written at ``length``."""
        b = block.shape[0]
        if self._length + b > self.max_cache_len:
            raise RuntimeError(
                f"static cache of {self.max_cache_len} positions is full ({self._length} + {b}); "
                f"build the engine with a larger max_cache_len"
            )
        if self._columns is None:
            self._columns = torch.arange(self.max_cache_len, device=self.device)
        allowed = (self._columns < self._length).expand(b, -1).clone()
        allowed[:, self._length : self._length + b] = block
        mask = torch.zeros(b, self.max_cache_len, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)[None, None]

    def _forward_logits(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask,
                         past_key_values=self._cache, use_cache=True)  # fmt: skip
        return out.logits

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int] | torch.Tensor) -> torch.Tensor:
        self.reset()
        ids = prompt_ids if isinstance(prompt_ids, torch.Tensor) else self.ids_tensor(list(prompt_ids))
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        t = ids.shape[1]
        if t == 0:
            raise ValueError("cannot prefill an empty prompt")
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril_()
        positions = torch.arange(t, device=self.device).unsqueeze(0)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=self._mask(causal),
                         past_key_values=self._cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        self.forwards += 1
        self._set_length(t)
        logits = out.logits[0, -1]
        if self.on_prefill_done is not None:
            self.on_prefill_done()
        return logits

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
        output_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        k = ids.shape[1]
        start = self._length
        if positions is None:
            positions = torch.arange(start, start + k, device=self.device).unsqueeze(0)
        block = (
            torch.ones(k, k, dtype=torch.bool, device=self.device).tril_()
            if tree_mask is None
            else tree_mask.to(self.device, torch.bool)
        )
        if output_hidden:  # rare path (Medusa): eager, exact width
            out = self.model(input_ids=ids, position_ids=positions, attention_mask=self._mask(block),
                             past_key_values=self._cache, use_cache=True, output_hidden_states=True)  # fmt: skip
            self.forwards += 1
            self._set_length(start + k)
            return out.logits, out.hidden_states[-1]
        b = bucket_size(k, self.buckets) if self.buckets else k
        if b > k:  # pad: extra tokens after the real ones, each attending only to itself
            pad = b - k
            ids = torch.cat([ids, ids[:, -1:].expand(1, pad)], dim=1)
            positions = torch.cat([positions, positions[:, -1:].expand(1, pad)], dim=1)
            full = torch.eye(b, dtype=torch.bool, device=self.device)
            full[:k, :k] = block
            block = full
        mask = self._mask(block)
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._decode_forward(ids, positions, mask)
        self.forwards += 1
        self._set_length(start + k)
        return logits[:, :k].clone() if self.compile else logits[:, :k]
