"""Batched model runner: B prompts share one KV cache, each row with its own length.

Decoders with a batch path (``generate_batch``: ``ar``, ``jacobi``/``cllm``,
``speculative``) talk to the model through :class:`BatchEngine`:

* :meth:`BatchEngine.prefill` — B prompts, left-padded to one width, into a fresh cache;
  returns the logits after each prompt's last token, [B, V];
* :meth:`BatchEngine.forward` — a block of k columns for every row, of which row b's
  first ``counts[b]`` are real tokens (the rest, and every column of a finished row with
  ``counts[b] == 0``, are padding); row b's tokens sit at positions
  ``lengths[b], lengths[b] + 1, ...``; returns logits [B, k, V];
* :meth:`BatchEngine.truncate` — per-row rollback: row b keeps its first ``lengths[b]``
  positions (the accepted text) and forgets the rest.

How rows of different lengths share one cache: every cache column holds, per row, an
entry with a *position* and a *valid* flag (``valid``/``pos``, both [B, S]). A forward
appends k columns for all rows; rejected or padded entries are only marked invalid
(holes), and trailing columns invalid in every row are cropped. Each forward gets an
explicit additive mask [B, 1, k, S + k]: a real token sees the valid entries of its row
and the real tokens before it in its block, nothing else. Rotary positions come from
``pos``, so holes change no logit. When holes make the cache much wider than the longest
row, :meth:`compact` gathers every row's valid entries to the right end of a narrower
cache (one gather per layer, amortised over many steps).

Invariant (the same as :class:`~cllm_bench.engines.dynamic.Engine`'s, per row): after a decoder's
step, row b's valid entries are exactly the KV of its accepted text (possibly minus the
newest token), at positions ``0 .. lengths[b] - 1``.

This is the eager, dynamic-cache reference path;
:class:`~cllm_bench.engines.static_batch.StaticBatchEngine` is the same contract on a
preallocated, compilable cache (``bench --batch-size`` uses it on CUDA). ``forwards``
counts batched forwards.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from transformers import PreTrainedModel

from cllm_bench.engines import kv_cache
from cllm_bench.engines.base import EngineCore
from cllm_bench.engines.protocols import EngineOptions


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one [B, T] long tensor; returns (ids, attention_mask [B, T]) on the CPU.

    ``left=True`` right-aligns every row (prompts for generation); otherwise rows start at
    column 0 (blocks of different lengths). T = the longest row (at least 1).
    """
    width = max(1, max((len(s) for s in seqs), default=1))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not len(seq):
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


class BatchEngine(EngineCore):
    """Eager engine over a dynamic cache holding B rows of different lengths (see module doc);
    a :class:`~cllm_bench.engines.protocols.BatchedEngine`.

    model: a causal LM, put in eval mode. pad_id: token fed in padded columns (never seen
    by a real token). compact_slack: compact when the cache is wider than
    ``1.5 * max(lengths) + compact_slack`` columns.
    """

    batched: ClassVar[bool] = True

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int = 0,
        on_prefill_done: Callable[[], None] | None = None,
        compact_slack: int = 32,
    ) -> None:
        super().__init__(model, on_prefill_done)
        self.pad_id = pad_id
        self.compact_slack = compact_slack
        self.options = EngineOptions(kind="dynamic")
        self.reset()

    # -- properties ------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """Columns currently in the cache (valid entries and holes)."""
        return int(self.valid.shape[1])

    # -- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        """Empty cache (no rows), forward counter to 0."""
        self._cache = kv_cache.new_dynamic_cache(self.config)
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        self.pos = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)
        self.forwards = 0

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run B prompts (each >= 1 token) into a fresh cache; logits after each prompt, [B, V]."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one prompt and no empty prompt")
        self.reset()
        ids, real = pad_batch(prompts, self.pad_id, left=True)
        ids, real = ids.to(self.device), real.to(self.device, torch.bool)
        width = ids.shape[1]
        pads = width - real.sum(dim=1, keepdim=True)  # [B, 1]
        positions = (torch.arange(width, device=self.device)[None] - pads).clamp(min=0)
        self.valid = torch.zeros(len(prompts), 0, dtype=torch.bool, device=self.device)
        self.pos = torch.zeros(len(prompts), 0, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        logits = self._run(ids, real, positions, logits_to_keep=1)
        self._signal_prefill()
        return logits[:, -1]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, counts: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Append a block of k columns to every row; returns logits [B, k, V].

        ids: [B, k] long. counts: [B] real tokens per row (default k for every row); row b's
        columns ``counts[b]:`` are padding, invisible to every real token and dropped.
        """
        batch, k = ids.shape
        if batch != self.batch_size:
            raise ValueError(f"forward got {batch} rows, the cache holds {self.batch_size}")
        ids = ids.to(self.device)
        if counts is None:
            counts_t = torch.full((batch,), k, dtype=torch.long, device=self.device)
        else:
            counts_t = torch.as_tensor(counts, dtype=torch.long).to(self.device)
        cols = torch.arange(k, device=self.device)
        real = cols[None] < counts_t[:, None]  # [B, k]
        return self._run(ids, real, positions=self.lengths[:, None] + cols[None])

    def _run(self, ids: torch.Tensor, real: torch.Tensor, positions: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One model forward of [B, k] ``ids`` (``real`` marks non-padding), appended to the cache."""
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=self._mask(real),
            **self._cache_kwarg(),
            use_cache=True,
            **kwargs,
        )
        self.valid = torch.cat([self.valid, real], dim=1)
        self.pos = torch.cat([self.pos, positions], dim=1)
        self.lengths = self.lengths + real.sum(dim=1)
        self.forwards += 1
        return out.logits

    def _mask(self, real: torch.Tensor) -> torch.Tensor:
        """[B, 1, k, S + k] additive mask for a block whose real columns are ``real`` [B, k].

        A query sees its row's valid cache entries and the real block tokens at or before
        it; every query also sees itself, so a padded query is never fully masked.
        """
        batch, k = real.shape
        causal = torch.ones(k, k, dtype=torch.bool, device=self.device).tril()
        new = causal[None] & real[:, None, :]  # [B, k, k]
        new = new | torch.eye(k, dtype=torch.bool, device=self.device)[None]
        old = self.valid[:, None, :].expand(batch, k, self.width)
        allowed = torch.cat([old, new], dim=2)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[:, None]

    # -- cache commit ----------------------------------------------------------------
    @torch.inference_mode()
    def truncate(self, lengths: torch.Tensor | Sequence[int]) -> None:
        """Row b keeps positions ``0 .. lengths[b] - 1`` (its accepted text); never grows a row."""
        new = torch.as_tensor(lengths, dtype=torch.long).to(self.device)
        if bool((new > self.lengths).any()):
            raise ValueError(f"cannot grow rows by truncation: {new.tolist()} > {self.lengths.tolist()}")
        self.valid = self.valid & (self.pos < new[:, None])
        self.lengths = new
        used = self.valid.any(dim=0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 0
        if keep < self.width:
            kv_cache.truncate(self._cache, keep)
            self.valid, self.pos = self.valid[:, :keep], self.pos[:, :keep]
        if self.width > 1.5 * int(self.lengths.max()) + self.compact_slack:
            self.compact()

    @torch.inference_mode()
    def compact(self) -> None:
        """Move every row's valid entries (in order) to the right end of a cache of
        ``max(lengths)`` columns; holes disappear, no logit changes."""
        width = int(self.lengths.max())
        # stable sort puts holes first, valid entries after them in their original order
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices[:, self.width - width :]
        kv_cache.gather_columns(self._cache, order)
        self.valid = self.valid.gather(1, order)
        self.pos = self.pos.gather(1, order)
