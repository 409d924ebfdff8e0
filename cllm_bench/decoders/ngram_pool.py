"""The n-gram pool, the proposer shared by lookahead decoding and CLLM + lookahead.

:class:`NGramPool` maps a first token to the (n-1)-token continuations seen after it, an
LRU list of at most ``capacity`` entries per key (a re-inserted continuation moves to the
newest end; when full the oldest is dropped). It is a small mutable object owned by one
``generate`` call — never module-level state. Its candidates are verified with the
primitives in :mod:`cllm_bench.decoders.verify`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

Gram = tuple[int, ...]


class NGramPool:
    """n-grams keyed by their first token, an LRU of ``capacity`` continuations per key.

    n: n-gram size (>= 2); a stored continuation has n-1 tokens.
    capacity: continuations kept per key (lookahead's G); the oldest is evicted first.
    """

    def __init__(self, n: int, capacity: int) -> None:
        if n < 2:
            raise ValueError(f"n-gram size must be >= 2, got {n}")
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.n = n
        self.capacity = capacity
        self._map: dict[int, OrderedDict[Gram, None]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._map.values())

    def add(self, key: int, continuation: Sequence[int]) -> None:
        """Insert (or refresh) ``continuation`` (n-1 tokens) under ``key``."""
        gram = tuple(int(t) for t in continuation)
        if len(gram) != self.n - 1:
            raise ValueError(f"a continuation has {self.n - 1} tokens, got {len(gram)}")
        entries = self._map.setdefault(int(key), OrderedDict())
        if gram in entries:
            entries.move_to_end(gram)
            return
        entries[gram] = None
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def add_sequence(self, tokens: Sequence[int], start: int = 0) -> None:
        """Insert every n-gram ``tokens[i:i+n]`` with ``i >= start`` (in text order)."""
        n = self.n
        for i in range(max(start, 0), len(tokens) - n + 1):
            self.add(tokens[i], tokens[i + 1 : i + n])

    def get(self, key: int) -> list[Gram]:
        """Continuations stored under ``key``, oldest first (empty list when none)."""
        entries = self._map.get(int(key))
        return list(entries) if entries else []
