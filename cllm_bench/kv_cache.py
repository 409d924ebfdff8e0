"""The one place that touches transformers' KV-cache API.

Cache classes moved between transformers releases (5.2x: ``DynamicCache(config=...)``,
``crop(n > 0)`` raises and ``crop(-k)`` drops k tokens; older 5.x: ``crop(max_len)``
with negative values also meaning "drop k"). Everything the engine needs goes through
these functions, and ``tests/test_kv_cache.py`` pins their behaviour.

Layout assumed (all transformers 5.x): ``cache.layers[i].keys`` / ``.values`` tensors of
shape [batch, kv_heads, seq, head_dim].
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig


def new_dynamic_cache(config: PretrainedConfig) -> DynamicCache:
    """An empty dynamic cache laid out for ``config`` (sliding/hybrid layers respected)."""
    try:
        return DynamicCache(config=config)
    except TypeError:  # releases without the config argument
        return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    """Number of positions currently held (0 for a fresh cache)."""
    return int(cache.get_seq_length())


def truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of every layer (no-op when already that short)."""
    drop = cache_length(cache) - length
    if drop < 0:
        raise ValueError(f"cannot truncate a cache of {cache_length(cache)} positions to {length}")
    if drop > 0:
        cache.crop(-drop)  # negative = "remove this many" in every 5.x release


def keep_positions(cache: DynamicCache, start: int, offsets: torch.Tensor) -> None:
    """Keep positions [0, start) plus ``start + offsets`` (in that order), drop the rest.

    Used after a tree/2-D forward (lookahead, Medusa) whose accepted tokens are not a
    contiguous prefix of what was fed. ``offsets``: 1-D long tensor, relative to ``start``.
    """
    index = torch.cat([torch.arange(start, device=offsets.device), start + offsets])
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)
