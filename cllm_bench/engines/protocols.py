"""What a decoder may call on an engine: one protocol per engine shape, and the options
an engine was built with.

Two shapes exist, told apart by the class attribute ``batched``:

* :class:`SingleEngine` (``batched = False``) — one sequence; implemented by
  :class:`~cllm_bench.engines.dynamic.Engine` (eager, dynamic cache: the reference) and
  :class:`~cllm_bench.engines.static.StaticEngine` (static cache, optionally compiled);
* :class:`BatchedEngine` (``batched = True``) — B sequences of different lengths in one
  cache; implemented by :class:`~cllm_bench.engines.batch.BatchEngine` and
  :class:`~cllm_bench.engines.static_batch.StaticBatchEngine`.

Shapes: V = vocabulary size, H = hidden size, k = tokens fed in one forward, B = rows.
Every engine also carries the :class:`EngineOptions` it was built with, so that
:func:`~cllm_bench.engines.factory.build_companion_engine` can build a second engine of
the same kind (a draft model's) without looking at concrete classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Protocol, Sequence

import torch

EngineKind = Literal["dynamic", "static"]


@dataclass(frozen=True)
class EngineOptions:
    """How an engine was built (a factory input and every engine's ``options``).

    kind: "dynamic" (eager, growing cache) or "static" (preallocated cache).
    compile: ``torch.compile`` the decode forward (static only).
    max_cache_len: capacity in positions (static only; 0 for dynamic).
    mode: the ``torch.compile`` mode.
    buckets: block sizes a forward is padded to (empty: no padding).
    """

    kind: EngineKind = "dynamic"
    compile: bool = False
    max_cache_len: int = 0
    mode: str = "reduce-overhead"
    buckets: tuple[int, ...] = ()


class SingleEngine(Protocol):
    """One sequence and its KV cache.

    Invariant: after a decoder's step, ``length`` equals the number of positions whose KV
    is exact for the accepted text (prompt + accepted tokens, possibly minus the newest
    token, fed at the next step). ``forwards`` counts every forward, prefill included.
    """

    batched: ClassVar[bool]
    model: Any
    options: EngineOptions
    forwards: int
    on_prefill_done: Callable[[], None] | None

    @property
    def length(self) -> int:
        """Positions currently in the KV cache."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def reset(self) -> None:
        """Empty cache, ``forwards`` to 0."""

    def ids_tensor(self, ids: list[int]) -> torch.Tensor:
        """[1, len(ids)] long tensor on the engine's device."""

    def prefill(self, prompt_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run the prompt (>= 1 token) into a fresh cache; logits of its last position, [V]."""

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
        output_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Append ids [1, k] at ``positions`` [1, k] (default: the next k) with an optional
        [k, k] bool ``tree_mask`` among the new tokens (default causal); every new token
        sees the whole committed cache. Returns logits [1, k, V] (and hidden [1, k, H]
        when ``output_hidden``)."""

    def forward_greedy(
        self, ids: torch.Tensor, positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward` (same arguments, same cache effect), returning only the argmax
        token id at each new position: [1, k] long, on the device. Equal to
        ``forward(...).argmax(-1)``; a compiled engine computes the argmax inside its
        compiled step, so only k ids leave the graph."""

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached positions, drop the rest."""

    def keep(self, start: int, offsets: list[int] | torch.Tensor) -> None:
        """Keep positions [0, start) and ``start + offsets`` of the last block, compacted in order."""


class BatchedEngine(Protocol):
    """B sequences in one cache, each row with its own length (``lengths`` [B] long).

    Invariant, per row: after a decoder's step, row b's valid entries are exactly the KV
    of its accepted text, at positions ``0 .. lengths[b] - 1``. ``forwards`` counts
    batched forwards.
    """

    batched: ClassVar[bool]
    model: Any
    options: EngineOptions
    pad_id: int
    forwards: int
    lengths: torch.Tensor
    on_prefill_done: Callable[[], None] | None

    @property
    def batch_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """B prompts (each >= 1 token), left-padded, into a fresh cache; logits after each, [B, V]."""

    def forward(self, ids: torch.Tensor, counts: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Append ids [B, k]; row b's first ``counts[b]`` columns are real (default all);
        row b's tokens sit at ``lengths[b], lengths[b] + 1, ...``. Returns logits [B, k, V]."""

    def truncate(self, lengths: torch.Tensor | Sequence[int]) -> None:
        """Row b keeps its first ``lengths[b]`` positions (never grows a row)."""


AnyEngine = SingleEngine | BatchedEngine


def is_batched(engine: Any) -> bool:
    """True for a :class:`BatchedEngine` (read off its ``batched`` attribute)."""
    return bool(getattr(engine, "batched", False))
