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

The last block is shortened to the remaining budget. The trace holds one step per forward
and the full block state after every iteration (``Trace.blocks``), from which
:mod:`cllm_bench.metrics` derives fast-forwarded and stationary counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cllm_bench.decoders.base import Decoder, OutputBuffer
from cllm_bench.engine import Engine
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


@register_decoder("jacobi")
@dataclass
class JacobiDecoder(Decoder):
    """Jacobi decoding with n-token blocks (``jacobi:n=16``)."""

    n: int = 16
    init: str = "random"
    seed: int = 0

    description = "Jacobi fixed-point decoding of n-token blocks (lossless)"
    label_params = ("n",)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")

    def generate(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace = Trace(prompt_len=len(prompt_ids))
        out = OutputBuffer(max_new_tokens, eos_ids)
        rng = random.Random(self.seed)
        first = int(engine.prefill(prompt_ids).argmax())
        trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([first]))
        context = list(prompt_ids)
        while not out.done:
            first = self.decode_block(engine, trace, out, first, context, rng)
        return out.finish(trace)

    def decode_block(
        self,
        engine: Engine,
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
        size = min(self.n, out.remaining + 1)
        start_in_output = len(out.tokens) - 1  # index of `first` in the output
        context.extend(out.tokens[len(context) - trace.prompt_len :])
        block = initial_guess(first, size, context, self.init, rng)
        states = [list(block)]
        base = engine.length  # position of block[0]
        fed_from = 0  # block[:fed_from] is in the cache, block[fed_from] is correct
        known = 1  # block[:known] are final output tokens
        block_index = len(trace.blocks)
        next_first = first
        while True:
            logits = engine.forward(engine.ids_tensor(block[fed_from:]))
            predicted = logits[0].argmax(dim=-1).tolist()  # predicted[j]: token after block[fed_from + j]
            proposal = block[: fed_from + 1] + predicted[:-1]
            mismatch = first_mismatch(block, proposal, fed_from + 1)
            if mismatch is None:  # fixed point: the whole block is final, predicted[-1] is the bonus
                accepted = out.accept(block[known:] + predicted[-1:])
                trace.record("target", fed=size - fed_from, accepted=accepted, block=block_index, fixed_point=True)
                next_first = predicted[-1]
                break
            engine.rollback(base + mismatch)
            block = proposal
            states.append(list(block))
            accepted = out.accept(block[known : mismatch + 1])
            trace.record("target", fed=size - fed_from, accepted=accepted, block=block_index, fixed_point=False)
            known, fed_from = mismatch + 1, mismatch
            if out.done:
                break
        trace.blocks.append(JacobiBlock(states=states, final=out.tokens[start_in_output : start_in_output + size]))
        return next_first
