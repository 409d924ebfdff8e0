"""``jacobi``: Jacobi (fixed-point) decoding of n-token blocks, lossless under greedy.

Algorithm (the CLLM reference's KV-cache + prefix-commit variant, "(a)" in
shared/REFERENCE_IMPLEMENTATIONS.md, which visits the same states as the full re-feed
variant "(b)" that the reference uses for its speed/fast-forward numbers):

1. Prefill the prompt; its argmax is the first output token ``t0``.
2. A block starts as ``[t0] + guess`` (n tokens; ``init="random"`` draws the n-1 guess
   tokens with replacement from prompt + output with a seeded RNG, as the reference does).
3. Iterate: feed the not-yet-cached suffix ``block[f:]`` (``block[f]`` is known correct),
   predict every next position, and form ``next = block[:f+1] + argmax[:-1]``. Let ``m`` be
   the first index > f where ``block`` and ``next`` differ. Then ``block[:m]`` are exactly
   the greedy tokens (each equals the argmax given its verified prefix), their KV is
   kept, ``next[m]`` is also greedy-correct, and the cache is rolled back to drop the rest.
   With no mismatch the block is the fixed point: all n tokens are final and the last
   argmax seeds the next block (the confirming forward).
4. Stop as soon as the known-correct tokens contain EOS or reach ``max_new_tokens`` —
   no forward is spent converging positions past the end.

:class:`BlockRun` is that state machine for one block; :meth:`JacobiDecoder.generate`
drives one, :meth:`JacobiDecoder.generate_batch` one per row of a batch (each row at its
own iteration, its own verified prefix kept per row by the batched engine), and ``cllm``'s
n-gram pool path a subclass that also verifies pool candidates.

The last block is shortened to the remaining budget. The trace holds one step per forward
and the full block state after every iteration (``Trace.blocks``), from which
:mod:`cllm_bench.metrics` derives fast-forwarded and stationary counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cllm_bench.engines.batch import pad_batch
from cllm_bench.decoders.base import Decoder, OutputBuffer, greedy_start, greedy_start_batch
from cllm_bench.engines.protocols import BatchedEngine, SingleEngine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import JacobiBlock, Trace

INIT_CHOICES = ("random", "repeat")


def initial_guess(first: int, size: int, context: list[int], init: str, rng: random.Random) -> list[int]:
    """The state s^0 of a block of ``size`` tokens whose first token ``first`` is known.

    "random": the other tokens drawn with replacement from ``context`` (prompt + output so
    far), as in the CLLM reference. "repeat": the other tokens are copies of ``first``.
    """
    if init == "random":
        return [first] + [context[rng.randrange(len(context))] for _ in range(size - 1)]
    return [first] * size


def first_mismatch(block: list[int], proposal: list[int], start: int) -> int | None:
    """Smallest i >= start with block[i] != proposal[i], or None when they agree from start on."""
    for i in range(start, len(block)):
        if block[i] != proposal[i]:
            return i
    return None


@dataclass
class BlockRun:
    """One Jacobi block in progress; the state machine both decode paths share.

    ``block`` is the current state (n' <= n tokens); ``block[:fed_from]`` is in the cache
    (at positions ``base ..``), ``block[fed_from]`` is known correct but not cached, and
    ``block[:known]`` are already output tokens. ``states`` records the trajectory.

    :meth:`update` is one Jacobi iteration, built from :meth:`jacobi_proposal` (the next
    state), :meth:`advance` (to a state with a longer verified prefix) and :meth:`complete`
    (the whole block final); a subclass that verifies extra candidates in the same forward
    (:class:`~cllm_bench.decoders.cllm.PoolBlockRun`) moves the state with the same two.
    """

    block: list[int]
    base: int
    index: int
    start_in_output: int
    fed_from: int = 0
    known: int = 1
    states: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.states = [list(self.block)]

    @property
    def size(self) -> int:
        return len(self.block)

    def feed(self) -> list[int]:
        """The tokens the next forward must carry: the not-yet-cached suffix."""
        return self.block[self.fed_from :]

    def jacobi_proposal(self, predicted: list[int]) -> tuple[list[int], int | None]:
        """The Jacobi update for the argmaxes of one forward over :meth:`feed`: the next
        state ``block[:f+1] + predicted[:-1]`` (f = ``fed_from``) and the first index > f
        where it differs from ``block`` (None: the block is at its fixed point)."""
        proposal = self.block[: self.fed_from + 1] + predicted[:-1]
        return proposal, first_mismatch(self.block, proposal, self.fed_from + 1)

    def update(self, predicted: list[int], out: OutputBuffer, trace: Trace, fed: int | None = None,
               **info: Any) -> int | None:  # fmt: skip
        """Apply the argmaxes of one forward over :meth:`feed` (``predicted[j]`` = token after
        ``feed()[j]``): extend the output, record the step, advance the state.

        fed: the forward's width when it carried more than :meth:`feed` (default its length);
        info: extra fields for the step record. Returns the first token of the next block
        when this block reached its fixed point, else None. Afterwards ``base + cached_len``
        is the cache length to keep.
        """
        proposal, mismatch = self.jacobi_proposal(predicted)
        if mismatch is None:  # fixed point: the whole block is final, predicted[-1] is the bonus
            return self.complete(predicted[-1], out, trace, fed, fixed_point=True, **info)
        self.advance(proposal, mismatch, out, trace, fed, **info)
        return None

    def advance(self, state: list[int], verified: int, out: OutputBuffer, trace: Trace, fed: int | None = None,
                **info: Any) -> None:  # fmt: skip
        """Move to ``state`` (n' tokens) whose ``state[:verified + 1]`` are final: output the
        newly final tokens, record the step (``fixed_point=False``), keep ``state[:verified]``
        cached (``state[verified]`` is known correct, fed next)."""
        fed = self.size - self.fed_from if fed is None else fed
        self.block = state
        self.states.append(list(state))
        accepted = out.accept(state[self.known : verified + 1])
        trace.record("target", fed=fed, accepted=accepted, block=self.index, fixed_point=False, **info)
        self.known, self.fed_from = verified + 1, verified

    def complete(self, bonus: int, out: OutputBuffer, trace: Trace, fed: int | None = None,
                 fixed_point: bool = True, **info: Any) -> int:  # fmt: skip
        """The whole current block is final: output it and ``bonus`` (the token after it),
        record the step, mark every position cached. Returns ``bonus`` (the next block's
        first token)."""
        fed = self.size - self.fed_from if fed is None else fed
        accepted = out.accept(self.block[self.known :] + [bonus])
        trace.record("target", fed=fed, accepted=accepted, block=self.index, fixed_point=fixed_point, **info)
        self.fed_from = self.known = self.size
        return bonus

    @property
    def cached_len(self) -> int:
        """Positions of this block whose KV stays in the cache (the verified prefix)."""
        return self.fed_from

    def finish(self, out: OutputBuffer) -> JacobiBlock:
        return JacobiBlock(states=self.states, final=out.tokens[self.start_in_output : self.start_in_output + self.size])


RunT = TypeVar("RunT", bound=BlockRun)


@register_decoder("jacobi")
@dataclass
class JacobiDecoder(Decoder):
    """Jacobi decoding with n-token blocks (``jacobi:n=16``)."""

    n: int = 16
    init: str = "random"
    seed: int = 0

    description = "Jacobi fixed-point decoding of n-token blocks (lossless)"
    label_params = ("n",)
    supports_batch = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace, out, first = greedy_start(engine, prompt_ids, max_new_tokens, eos_ids)
        rng = random.Random(self.seed)
        context = list(prompt_ids)
        while not out.done:
            first = self.decode_block(engine, trace, out, first, context, rng)
        return out.finish(trace)

    def start_block(self, trace: Trace, out: OutputBuffer, first: int, context: list[int], rng: random.Random,
                    base: int, run_type: type[RunT] = BlockRun) -> RunT:  # type: ignore[assignment]  # fmt: skip
        """A new block after output token ``first`` (the last output token, not cached, at
        ``base``); ``context`` (prompt + output) is brought up to date first. ``run_type``:
        the :class:`BlockRun` subclass to drive it (the n-gram pool's, for ``cllm``)."""
        size = min(self.n, out.remaining + 1)
        context.extend(out.tokens[len(context) - trace.prompt_len :])
        block = initial_guess(first, size, context, self.init, rng)
        return run_type(block=block, base=base, index=len(trace.blocks), start_in_output=len(out.tokens) - 1)

    def decode_block(
        self,
        engine: SingleEngine,
        trace: Trace,
        out: OutputBuffer,
        first: int,
        context: list[int],
        rng: random.Random,
    ) -> int:
        """Run one block to its fixed point (or to the end of the output).

        Precondition: ``first`` is the last output token and is not in the cache.
        Returns the first token of the next block.
        """
        run = self.start_block(trace, out, first, context, rng, engine.length)
        next_first = first
        while True:
            predicted = engine.forward_greedy(engine.ids_tensor(run.feed()))
            done = run.update(predicted[0].tolist(), out, trace)
            if done is not None:
                next_first = done
                break
            engine.rollback(run.base + run.cached_len)
            if out.done:
                break
        trace.blocks.append(run.finish(out))
        return next_first

    def generate_batch(
        self, engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """Every unfinished row runs its own block; one batched forward carries each row's
        not-yet-cached suffix (right-padded to the longest), then each row keeps its own
        verified prefix. Each row's trace equals :meth:`generate`'s on that prompt."""
        traces, outs, firsts = greedy_start_batch(engine, prompts, max_new_tokens, eos_ids)
        rngs = [random.Random(self.seed) for _ in prompts]
        contexts = [list(p) for p in prompts]
        runs: list[BlockRun | None] = []
        for b, first in enumerate(firsts):
            runs.append(None if outs[b].done else self.start_block(traces[b], outs[b], first, contexts[b], rngs[b], len(prompts[b])))
        while any(r is not None for r in runs):
            feeds = [r.feed() if r is not None else [] for r in runs]
            ids, _ = pad_batch(feeds, engine.pad_id)
            predicted = engine.forward(ids, [len(f) for f in feeds]).argmax(dim=-1).tolist()
            keep = engine.lengths.tolist()
            for b, run in enumerate(runs):
                if run is None:
                    continue
                nxt = run.update(predicted[b][: len(feeds[b])], outs[b], traces[b])
                keep[b] = run.base + run.cached_len
                if nxt is None and not outs[b].done:
                    continue
                traces[b].blocks.append(run.finish(outs[b]))
                runs[b] = None if outs[b].done else self.start_block(traces[b], outs[b], nxt, contexts[b], rngs[b], keep[b])
            engine.truncate(keep)
        return [o.finish(t) for o, t in zip(outs, traces)]
