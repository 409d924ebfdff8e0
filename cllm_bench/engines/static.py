"""The fast engine path: a preallocated (static) KV cache, optionally ``torch.compile``d.

Same protocol (:class:`~cllm_bench.engines.protocols.SingleEngine`) and invariants as
:class:`~cllm_bench.engines.dynamic.Engine`, so every decoder runs
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
  padding changes no real logit. The prefill (variable length) runs eagerly. On a CPU
  the graph is compiled with inductor's weight freezing (:func:`compiled_decode`).
* :meth:`StaticEngine.forward_greedy` is the decode step of greedy decoders (gpt-fast's
  ``decode_one_token``): mask, forward, cache write and argmax in one compiled graph,
  whose output is the k token ids, not the [k, V] logits. It is its own graph (one per
  bucket), compiled on first use, so a run that only decodes greedily compiles only it.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from transformers import PreTrainedModel

from cllm_bench.engines import kv_cache
from cllm_bench.engines.base import EngineCore
from cllm_bench.engines.protocols import EngineOptions

DEFAULT_BUCKETS = (1, 8, 16, 32, 64, 128, 256)  # few shapes = few compiled graphs; padding is ~free on GPU


def bucket_size(k: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= k (k itself when larger than every bucket)."""
    for b in buckets:
        if b >= k:
            return b
    return k


def compiled_decode(
    forward: Callable[..., torch.Tensor], compile: bool, mode: str, device: torch.device | None = None
) -> Callable[..., torch.Tensor]:
    """``forward`` compiled with static shapes and the whole graph (``fullgraph``), or as is.

    On a CPU the graph is compiled with inductor's ``freezing`` instead of ``mode``
    (whose "reduce-overhead" means CUDA graphs, nothing on a CPU): the weights become
    constants of the graph, folded and pre-packed for the CPU's matrix kernels. Measured
    on this project's CPU (``results/bench/README.md``): the compiled ``ar`` at 1.25x HF
    eager and 1.15x HF's own static cache + compile. The price: inductor does not keep
    frozen graphs in its FX-graph cache, so a second process lowers the graph again (its
    C++ kernels are still cached) — see :mod:`cllm_bench.compile_cache`. The weights must
    not change after the first call (decoding never changes them).

    Compiling raises dynamo's recompile limit to 64: there is one graph per (engine, block
    bucket), and a run with a draft engine and several buckets needs more than the
    default 8 compilations of one function.
    """
    if not compile:
        return forward
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    if limit is not None and limit < 64:
        torch._dynamo.config.recompile_limit = 64
    if device is not None and device.type == "cpu":
        return frozen(torch.compile(forward, fullgraph=True, dynamic=False, options={"freezing": True}))
    return torch.compile(forward, mode=mode, fullgraph=True, dynamic=False)


def frozen(compiled: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``compiled`` called with inductor's ``freezing`` switched on around every call.

    The ``options`` of :func:`torch.compile` reach inductor only after dynamo has traced
    the graph; dynamo decides at trace time whether parameters are frozen constants
    (``torch._dynamo.utils.is_parameter_freezing`` reads the global setting). A trace can
    happen at any call (a new block bucket), so the setting is patched around each call
    and restored after it: nothing global outlives the call.
    """

    import torch._inductor.config as inductor_config

    def call(*args: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(*args)

    return call


class StaticEngine(EngineCore):
    """A :class:`~cllm_bench.engines.protocols.SingleEngine` over a static cache; see the module docstring.

    max_cache_len: capacity in positions (prompt + generated + the widest block + padding).
    compile: compile the decode forward; mode: the ``torch.compile`` mode.
    """

    batched: ClassVar[bool] = False

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
        super().__init__(model, on_prefill_done)
        self.max_cache_len = max_cache_len
        self.compile = compile
        self.buckets = buckets if (compile if pad_to_buckets is None else pad_to_buckets) else ()
        self.options = EngineOptions(kind="static", compile=compile, max_cache_len=max_cache_len, mode=mode,
                                     buckets=self.buckets)  # fmt: skip
        self._cache = kv_cache.new_static_cache(self.config, max_cache_len)
        self._length = 0
        self._columns = torch.arange(max_cache_len, device=self.device)
        self._length_t = torch.zeros((), dtype=torch.long, device=self.device)  # == self._length, on device
        self._causal: dict[int, torch.Tensor] = {}
        self._decode_forward = compiled_decode(self._forward_logits, compile, mode, self.device)
        self._greedy_forward = compiled_decode(self._forward_argmax, compile, mode, self.device)
        self.reset()

    # -- state -----------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self) -> None:
        """Empty the cache (a length update: the buffers are reused), ``forwards`` to 0."""
        self._set_length(0)
        self.forwards = 0

    @property
    def length(self) -> int:
        return self._length

    @torch.inference_mode()
    def _set_length(self, length: int, cache_in_sync: bool = False) -> None:
        """Set the committed length; ``cache_in_sync``: the cache layers already hold it."""
        self._length = length
        self._length_t.fill_(length)
        if not cache_in_sync:
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
    def _causal_block(self, b: int) -> torch.Tensor:
        if b not in self._causal:
            self._causal[b] = torch.ones(b, b, dtype=torch.bool, device=self.device).tril_()
        return self._causal[b]

    def _check_room(self, b: int) -> None:
        if self._length + b > self.max_cache_len:
            raise RuntimeError(
                f"static cache of {self.max_cache_len} positions is full ({self._length} + {b}); "
                f"build the engine with a larger max_cache_len"
            )

    def _mask(self, block: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """[1, 1, b, max_cache_len] additive mask for a b-token block written at ``length``.

        Pure tensor code (no host values), so it runs inside the compiled graph: column c
        is visible when c < length (committed), or when it is block column c - length
        and ``block`` allows it.
        """
        b = block.shape[0]
        rel = self._columns - length  # [max_cache_len]
        in_block = (rel >= 0) & (rel < b)
        from_block = block[:, rel.clamp(0, b - 1)] & in_block  # [b, max_cache_len]
        allowed = (rel < 0) | from_block
        zero = torch.zeros((), dtype=self.dtype, device=block.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)[None, None]

    def _forward_logits(
        self, ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=self._mask(block, length),
                         **self._cache_kwarg(), use_cache=True)  # fmt: skip
        return out.logits

    def _forward_argmax(
        self, ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        return self._forward_logits(ids, positions, block, length).argmax(dim=-1)

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int] | torch.Tensor) -> torch.Tensor:
        self.reset()
        ids = self.prompt_tensor(prompt_ids)
        t = ids.shape[1]
        self._check_room(t)
        positions = torch.arange(t, device=self.device).unsqueeze(0)
        mask = self._mask(self._causal_block(t), self._length_t)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask,
                         **self._cache_kwarg(), use_cache=True, logits_to_keep=1)  # fmt: skip
        self._set_length(t, cache_in_sync=True)
        return self._prefill_done(out.logits)

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
        ids, positions, block = self._block_inputs(ids, positions, tree_mask)
        if output_hidden:  # rare path (Medusa): eager, exact width
            out = self.model(input_ids=ids, position_ids=positions, attention_mask=self._mask(block, self._length_t),
                             **self._cache_kwarg(), use_cache=True, output_hidden_states=True)  # fmt: skip
            self.forwards += 1
            self._set_length(start + k, cache_in_sync=True)
            return out.logits, out.hidden_states[-1]
        return self._run_block(self._decode_forward, ids, positions, block)

    @torch.inference_mode()
    def forward_greedy(
        self, ids: torch.Tensor, positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward` with the argmax inside the (compiled) step: [1, k] long ids."""
        ids, positions, block = self._block_inputs(ids, positions, tree_mask)
        return self._run_block(self._greedy_forward, ids, positions, block)

    def _block_inputs(
        self, ids: torch.Tensor, positions: torch.Tensor | None, tree_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, positions, block mask) of a k-token block written at the current length,
        checked for room (its padded width included)."""
        k = ids.shape[1]
        if not ids.is_inference():  # one dispatch-key set for the compiled graph's guards
            ids = ids.clone()
        self._check_room(bucket_size(k, self.buckets) if self.buckets else k)
        if positions is None:
            positions = (self._columns[:k] + self._length).unsqueeze(0)
        block = self._causal_block(k) if tree_mask is None else tree_mask.to(self.device, torch.bool)
        return ids, positions, block

    def _run_block(
        self, step: Callable[..., torch.Tensor], ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor
    ) -> torch.Tensor:
        """Run ``step`` (the logits or the argmax graph) on the block padded to its bucket;
        count the forward and commit the k real positions. Returns the k real positions'
        output [1, k, ...] (a copy when compiled: the graph's output buffer is reused)."""
        k, start = ids.shape[1], self._length
        b = bucket_size(k, self.buckets) if self.buckets else k
        if b > k:  # pad: extra tokens after the real ones, each attending only to itself
            pad = b - k
            ids = torch.cat([ids, ids[:, -1:].expand(1, pad)], dim=1)
            positions = torch.cat([positions, positions[:, -1:].expand(1, pad)], dim=1)
            full = torch.eye(b, dtype=torch.bool, device=self.device)
            full[:k, :k] = block
            block = full
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        out = step(ids, positions, block, self._length_t)
        self.forwards += 1
        self._set_length(start + k, cache_in_sync=(b == k))
        return out[:, :k].clone() if self.compile else out[:, :k]
