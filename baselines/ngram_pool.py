"""Pieces shared by the draft-and-verify baselines: the n-gram pool and greedy verification.

* :class:`NGramPool` — lookahead decoding's n-gram pool: a map from a first token to the
  (n-1)-token continuations seen after it, an LRU list of at most ``capacity`` entries
  per key (a re-inserted continuation moves to the newest end; when full the oldest is
  dropped).
* :func:`chain_accept` — greedy verification of one speculated chain (speculative
  decoding, prompt lookup): longest agreeing prefix plus the target's next token.
* :func:`ancestor_mask` / :func:`tree_accept` — greedy verification of a token tree fed in
  one forward with a tree attention mask (Medusa trees, lookahead's verification branch,
  CLLM + lookahead): the longest root-to-node path whose every token is the target's
  argmax after its parent, plus the argmax after the path's last node (the bonus token).

All functions are pure (Python lists in, Python lists out) except the pool, which is a
small mutable object owned by one ``generate`` call — never module-level state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

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


def chain_accept(draft: Sequence[int], predicted: Sequence[int]) -> list[int]:
    """Greedy verification of one speculated chain.

    draft: the k speculated tokens d_1..d_k, fed after the last accepted token x.
    predicted: k+1 target argmaxes; ``predicted[i]`` follows (x, d_1..d_i).
    Returns the accepted tokens ``d_1..d_m + [predicted[m]]`` (m = longest agreeing prefix),
    1 <= len <= k+1. Each returned token equals the greedy token of the target.
    """
    m = 0
    while m < len(draft) and int(draft[m]) == int(predicted[m]):
        m += 1
    return [int(t) for t in draft[:m]] + [int(predicted[m])]


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """[k, k] bool tree attention mask: ``mask[i, j]`` iff node j is node i or an ancestor.

    parents: ``parents[i]`` is the index of node i's parent (``-1`` for a root); parents
    must come before children (``parents[i] < i``).
    """
    k = len(parents)
    mask = torch.zeros(k, k, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            if p >= i:
                raise ValueError(f"node {i} has parent {p}: parents must precede children")
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def tree_accept(tokens: Sequence[int], parents: Sequence[int], predicted: Sequence[int]) -> tuple[list[int], list[int]]:
    """Greedy verification of a token tree rooted at node 0.

    tokens: node tokens; node 0 is the root, the last accepted token (already output).
    parents: parent index per node (``parents[0] = -1``, ``parents[i] < i``).
    predicted: target argmax at every node (the token that follows the node's path).
    Returns ``(path, accepted)``: ``path`` = node indices (root excluded) of the longest
    verified root-to-node path, ties broken by the smallest node index; ``accepted`` =
    the path's tokens followed by the argmax at its last node (1 <= len = len(path)+1).
    A node is verified iff its parent is verified and ``tokens[node] == predicted[parent]``.
    """
    k = len(tokens)
    depth = [-1] * k  # -1: not verified
    depth[0] = 0
    best = 0
    for i in range(1, k):
        p = parents[i]
        if depth[p] >= 0 and int(tokens[i]) == int(predicted[p]):
            depth[i] = depth[p] + 1
            if depth[i] > depth[best]:
                best = i
    path: list[int] = []
    node = best
    while node != 0:
        path.append(node)
        node = parents[node]
    path.reverse()
    return path, [int(tokens[i]) for i in path] + [int(predicted[best])]
