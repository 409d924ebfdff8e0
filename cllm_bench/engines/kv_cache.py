"""The one place that touches transformers' KV-cache API.

Cache classes moved between transformers releases (5.2x: ``DynamicCache(config=...)``,
``crop(n > 0)`` raises and ``crop(-k)`` drops k tokens; older 5.x: ``crop(max_len)``
with negative values also meaning "drop k"). Everything the engine needs goes through
these functions, and ``tests/test_kv_cache.py`` pins their behaviour.

Layout assumed (all transformers 5.x): ``cache.layers[i].keys`` / ``.values`` tensors of
shape [batch, kv_heads, seq, head_dim].

The forward keyword for the cache was renamed: ``past_key_values`` until 5.2x, ``cache``
since (the old name warns "deprecated, removed in 5.40"). :func:`cache_keyword` reads the
name off the model's ``forward`` signature once, when an engine is built; the engines then
pass ``**{keyword: cache}``, so no forward ever goes through the deprecated name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig

#: forward keyword of the KV cache, newest first
CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(model: Any) -> str:
    """The keyword ``model.forward`` takes its KV cache under: ``"cache"`` when the signature
    names it (transformers >= 5.2x), else ``"past_key_values"`` (older 5.x releases).

    Read once per engine (not per call). A forward that names neither (``**kwargs`` only,
    e.g. remote code) gets ``past_key_values``, which every release still maps.
    """
    params = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in params), "past_key_values")


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


# --------------------------------------------------------------------------- static cache
def new_static_cache(config: PretrainedConfig, max_cache_len: int):
    """A preallocated cache of ``max_cache_len`` positions (written in place; compile-friendly)."""
    from transformers import StaticCache

    return StaticCache(config=config, max_cache_len=max_cache_len)


def set_static_length(cache, length: int) -> None:
    """Make the next write of every layer land at ``length`` (rollback = a length update).

    Entries at and after ``length`` stay in memory but are masked out by the engine and
    overwritten by the next write.
    """
    lengths = [layer.cumulative_length for layer in cache.layers if getattr(layer, "is_initialized", False)]
    if lengths:  # two fused launches for all layers instead of one fill per layer
        torch._foreach_mul_(lengths, 0)
        torch._foreach_add_(lengths, length)


def static_keep_positions(cache, start: int, offsets: torch.Tensor) -> None:
    """Move entries ``start + offsets`` to ``start, start+1, ...`` in every layer, in place."""
    src = start + offsets
    dst = torch.arange(start, start + offsets.numel(), device=offsets.device)
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        s, d = src.to(layer.keys.device), dst.to(layer.keys.device)
        layer.keys.index_copy_(2, d, layer.keys.index_select(2, s))
        layer.values.index_copy_(2, d, layer.values.index_select(2, s))


def gather_columns(cache: DynamicCache, index: torch.Tensor) -> None:
    """Row b of every layer keeps columns ``index[b]`` (in that order); ``index``: [B, W] long.

    Used by :class:`~cllm_bench.engines.batch.BatchEngine` to squeeze holes out of a
    batched cache whose rows hold different numbers of valid entries.
    """
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        b, h, _, d = layer.keys.shape
        idx = index.to(layer.keys.device)[:, None, :, None].expand(b, h, index.shape[1], d)
        layer.keys = layer.keys.gather(2, idx)
        layer.values = layer.values.gather(2, idx)


def static_gather_columns(cache, index: torch.Tensor) -> None:
    """Static-cache :func:`gather_columns`: row b's columns ``index[b]`` ([B, W]) are copied,
    in place, to columns ``0 .. W-1`` (the buffers keep their addresses for CUDA graphs)."""
    width = index.shape[1]
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        b, h, _, d = layer.keys.shape
        idx = index.to(layer.keys.device)[:, None, :, None].expand(b, h, width, d)
        layer.keys[:, :, :width].copy_(layer.keys.gather(2, idx))
        layer.values[:, :, :width].copy_(layer.values.gather(2, idx))
