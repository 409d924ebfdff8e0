"""The fast path for batch > 1: :class:`BatchEngine`'s contract on a preallocated cache,
optionally ``torch.compile``d (CUDA graphs on GPU).

Same semantics as :class:`~cllm_bench.engines.batch.BatchEngine` (per-row lengths, holes
for rejected entries, compaction), so every batched decoder runs on it unchanged;
``tests/test_batch.py`` checks the tokens against the eager engine.

* The cache is a transformers ``StaticCache`` of ``max_cache_len`` columns for B rows,
  written in place at the shared write column ``width`` (all rows write the same
  columns; a row's padded or rejected entries are holes).
* ``valid``/``pos`` are preallocated [B, max_cache_len] buffers updated in place; the
  additive mask [B, 1, k, max_cache_len] is built from them inside the compiled graph.
* Per-row rollback is a ``valid`` update plus moving ``width`` back to the last column any
  row still uses (a length update, no copy). Compaction gathers in place.
* Blocks are padded to ``buckets`` sizes when compiled, to bound the number of graphs;
  pad columns are invisible to real tokens and lie past the new ``width``.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from transformers import PreTrainedModel

from cllm_bench.engines import kv_cache
from cllm_bench.engines.base import EngineCore
from cllm_bench.engines.batch import pad_batch
from cllm_bench.engines.protocols import EngineOptions
from cllm_bench.engines.static import DEFAULT_BUCKETS, bucket_size, compiled_decode


class StaticBatchEngine(EngineCore):
    """:class:`~cllm_bench.engines.batch.BatchEngine`'s contract (a
    :class:`~cllm_bench.engines.protocols.BatchedEngine`) over a static cache; see the
    module docstring.

    max_cache_len: columns per row (prompt width + generated + holes + the widest block).
    compile: compile the decode forward (``mode``, default "reduce-overhead").
    pad_to_buckets: pad blocks to ``buckets`` sizes (default: when compiled).
    """

    batched: ClassVar[bool] = True

    def __init__(
        self,
        model: PreTrainedModel,
        max_cache_len: int,
        pad_id: int = 0,
        compile: bool = False,
        mode: str = "reduce-overhead",
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        pad_to_buckets: bool | None = None,
        on_prefill_done: Callable[[], None] | None = None,
        compact_slack: int = 32,
    ) -> None:
        super().__init__(model, on_prefill_done)
        self.pad_id = pad_id
        self.compact_slack = compact_slack
        self.max_cache_len = max_cache_len
        self.compile = compile
        self.buckets = buckets if (compile if pad_to_buckets is None else pad_to_buckets) else ()
        self.options = EngineOptions(kind="static", compile=compile, max_cache_len=max_cache_len, mode=mode,
                                     buckets=self.buckets)  # fmt: skip
        self._width = 0
        self._rows = -1  # batch size the cache is laid out for
        self._columns = torch.arange(max_cache_len, device=self.device)
        self._decode_forward = compiled_decode(self._forward_logits, compile, mode, self.device)
        self.reset()

    # -- state -----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """Columns in use (valid entries and holes) up to the shared write column."""
        return self._width

    @torch.inference_mode()
    def reset(self, rows: int = 0) -> None:
        """Empty every row; (re)allocate the buffers when the batch size changes."""
        if rows != self._rows:
            self._cache = kv_cache.new_static_cache(self.config, self.max_cache_len)
            self.valid = torch.zeros(rows, self.max_cache_len, dtype=torch.bool, device=self.device)
            self.pos = torch.zeros(rows, self.max_cache_len, dtype=torch.long, device=self.device)
            self._width_t = torch.zeros((), dtype=torch.long, device=self.device)
            self._rows = rows
        else:
            self.valid.zero_()
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self._set_width(0)
        self.forwards = 0

    def _set_width(self, width: int, cache_in_sync: bool = False) -> None:
        self._width = width
        self._width_t.fill_(width)
        if not cache_in_sync:
            kv_cache.set_static_length(self._cache, width)

    def _check_room(self, k: int) -> None:
        if self._width + k > self.max_cache_len:
            self.compact()
        if self._width + k > self.max_cache_len:
            raise RuntimeError(
                f"static batch cache of {self.max_cache_len} columns is full ({self._width} + {k}); "
                f"build the engine with a larger max_cache_len"
            )

    # -- masks -----------------------------------------------------------------------
    def _static_mask(self, real: torch.Tensor, valid: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """[B, 1, k, max_cache_len] additive mask for a block of ``real`` [B, k] columns
        written at ``width``. Pure tensor code: runs inside the compiled graph."""
        k = real.shape[1]
        rel = self._columns - width  # [C]
        in_block = (rel >= 0) & (rel < k)
        j = rel.clamp(0, k - 1)
        query = torch.arange(k, device=real.device)[:, None]  # [k, 1]
        causal = (j[None] <= query) & in_block[None]  # [k, C]
        from_block = causal[None] & real[:, j][:, None, :]  # [B, k, C]
        itself = in_block[None] & (j[None] == query)  # [k, C]
        committed = (valid & (rel < 0)[None])[:, None, :]  # [B, 1, C]
        allowed = committed | from_block | itself[None]
        zero = torch.zeros((), dtype=self.dtype, device=real.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)[:, None]

    def _forward_logits(self, ids: torch.Tensor, positions: torch.Tensor, real: torch.Tensor, valid: torch.Tensor,
                        width: torch.Tensor) -> torch.Tensor:  # fmt: skip
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=self._static_mask(real, valid, width),
                         **self._cache_kwarg(), use_cache=True)  # fmt: skip
        return out.logits

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one prompt and no empty prompt")
        self.reset(len(prompts))
        ids, real = pad_batch(prompts, self.pad_id, left=True)
        ids, real = ids.to(self.device), real.to(self.device, torch.bool)
        width = ids.shape[1]
        self._check_room(width)
        positions = (self._columns[:width][None] - (width - real.sum(dim=1, keepdim=True))).clamp(min=0)
        mask = self._static_mask(real, self.valid, self._width_t)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask,
                         **self._cache_kwarg(), use_cache=True, logits_to_keep=1)  # fmt: skip
        self._commit_block(real, positions, width, cache_in_sync=True)
        self._signal_prefill()
        return out.logits[:, -1]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, counts: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        rows, k = ids.shape
        if rows != self.batch_size:
            raise ValueError(f"forward got {rows} rows, the cache holds {self.batch_size}")
        ids = ids.to(self.device)
        counts_t = (torch.full((rows,), k, dtype=torch.long) if counts is None
                    else torch.as_tensor(counts, dtype=torch.long)).to(self.device)  # fmt: skip
        kb = bucket_size(k, self.buckets) if self.buckets else k
        self._check_room(kb)
        cols = self._columns[:kb]
        real = cols[None] < counts_t[:, None]  # [B, kb]: bucket padding is never real
        positions = self.lengths[:, None] + cols[None]
        if kb > k:
            ids = torch.cat([ids, ids[:, -1:].expand(rows, kb - k)], dim=1)
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._decode_forward(ids, positions, real, self.valid, self._width_t)
        self._commit_block(real[:, :k], positions[:, :k], k, cache_in_sync=(kb == k))
        return logits[:, :k].clone() if self.compile else logits[:, :k]

    def _commit_block(self, real: torch.Tensor, positions: torch.Tensor, k: int, cache_in_sync: bool) -> None:
        """Record the k columns just written at ``width``: validity, positions, lengths."""
        start = self._width
        self.valid[:, start : start + k] = real
        self.pos[:, start : start + k] = positions
        self.lengths = self.lengths + real.sum(dim=1)
        self.forwards += 1
        self._set_width(start + k, cache_in_sync=cache_in_sync)

    # -- cache commit ----------------------------------------------------------------
    @torch.inference_mode()
    def truncate(self, lengths: torch.Tensor | Sequence[int]) -> None:
        new = torch.as_tensor(lengths, dtype=torch.long).to(self.device)
        if bool((new > self.lengths).any()):
            raise ValueError(f"cannot grow rows by truncation: {new.tolist()} > {self.lengths.tolist()}")
        self.valid &= self.pos < new[:, None]
        self.lengths = new
        used = self.valid[:, : self._width].any(dim=0).nonzero()
        self._set_width(int(used.max()) + 1 if used.numel() else 0)
        if self._width > 1.5 * int(self.lengths.max()) + self.compact_slack:
            self.compact()

    @torch.inference_mode()
    def compact(self) -> None:
        width = int(self.lengths.max())
        order = torch.sort(self.valid[:, : self._width].to(torch.int8), dim=1, stable=True).indices
        order = order[:, self._width - width :]
        kv_cache.static_gather_columns(self._cache, order)
        valid, pos = self.valid[:, : self._width].gather(1, order), self.pos[:, : self._width].gather(1, order)
        self.valid.zero_()
        self.valid[:, :width] = valid
        self.pos[:, :width] = pos
        self._set_width(width)
