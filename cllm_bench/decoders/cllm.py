"""``cllm``: Jacobi decoding of a CLLM checkpoint, optionally with an n-gram lookahead branch.

The decoder is model-agnostic: a CLLM (consistency-distilled) checkpoint is an ordinary
causal LM that converges in fewer Jacobi iterations, so ``cllm:n=16`` is exactly
:class:`~cllm_bench.decoders.jacobi.JacobiDecoder` (same algorithm, same trace and
fast-forward/stationary bookkeeping); run it with ``--models <cllm checkpoint>``.

``lookahead=true`` — **our own construction** (neither the CLLM nor the lookahead repository
contains code combining them; shared/REFERENCE_IMPLEMENTATIONS.md §A.8):

* an :class:`~cllm_bench.decoders.ngram_pool.NGramPool` (n-gram size ``ngram``, LRU of
  ``g`` per key) is fed with the prompt's and the output's n-grams and with the n-grams of
  every Jacobi state the block visits (the state after each iteration, from the first
  unverified position on);
* each Jacobi iteration feeds the unverified block suffix ``block[f:]`` (``block[f]`` is
  known correct) **plus** up to ``guesses`` pool continuations of ``block[f]`` as extra
  chains (each attends to ``block[f]`` and its own prefix, at positions f+1.., through a
  tree mask) — still one forward. Candidates equal to the block's own guess are skipped,
  and a candidate is cut so it never reaches past the block's last position;
* verification: the Jacobi path verifies ``block[:m]`` (m = first mismatch) and the
  candidate path verifies ``block[:f+1] + c[:h]``. When a candidate verifies more
  positions (f+1+h > m), it wins: the block's state becomes ``block[:f+1] + c[:h] +
  [bonus] + the Jacobi proposal for the remaining positions`` and the KV of the accepted
  candidate tokens is kept (:meth:`SingleEngine.keep`); otherwise the iteration is plain Jacobi.

Fast-forward/stationary: a pool hit is just an iteration whose new state has a longer
correct prefix, so the block trajectory (``Trace.blocks``) stays a sequence of full block
states ending at the fixed point and the metrics apply unchanged — the jump counts as
that iteration's fast-forward. A hit that verifies the whole block ends it (its state is
recorded; no confirming forward is needed). Lossless for the same reason as Jacobi and
lookahead: every accepted token is the argmax given exactly the verified prefix.

The pool path is :class:`PoolBlockRun`, Jacobi's :class:`~cllm_bench.decoders.jacobi.BlockRun`
extended with the candidate chains: the Jacobi update, the block trajectory and the step
records are BlockRun's own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from cllm_bench.decoders.base import OutputBuffer, greedy_start
from cllm_bench.decoders.jacobi import BlockRun, JacobiDecoder
from cllm_bench.decoders.ngram_pool import NGramPool
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.errors import UserError
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


def pick_candidates(
    pool: NGramPool, key: int, block_guess: list[int], room: int, limit: int
) -> list[tuple[int, ...]]:
    """Up to ``limit`` pool continuations of ``key`` (newest first), cut to ``room`` tokens.

    Candidates whose tokens equal the block's current guess for those positions
    (``block_guess``) add nothing and are skipped; duplicates after cutting are dropped.
    """
    if room < 1 or limit < 1:
        return []
    picked: list[tuple[int, ...]] = []
    for cont in reversed(pool.get(key)):
        cand = tuple(cont[:room])
        if list(cand) == block_guess[: len(cand)] or cand in picked:
            continue
        picked.append(cand)
        if len(picked) == limit:
            break
    return picked


def block_with_candidates(seg_len: int, candidates: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative positions [k] and tree mask [k, k] for ``segment + candidates``.

    The segment (seg_len tokens, position offsets 0..seg_len-1) is causal; candidate c
    (offsets 1..len(c)) attends to the segment's first token and its own prefix.
    """
    k = seg_len + sum(len(c) for c in candidates)
    mask = torch.zeros(k, k, dtype=torch.bool)
    mask[:seg_len, :seg_len] = torch.ones(seg_len, seg_len, dtype=torch.bool).tril()
    offsets = list(range(seg_len))
    s = seg_len
    for cand in candidates:
        n = len(cand)
        mask[s : s + n, s : s + n] = torch.ones(n, n, dtype=torch.bool).tril()
        mask[s : s + n, 0] = True
        offsets.extend(range(1, n + 1))
        s += n
    return torch.tensor(offsets, dtype=torch.long), mask


def candidate_hits(cand: tuple[int, ...], root_pred: int, cand_preds: list[int]) -> int:
    """Verified tokens of one candidate chain: c[0] vs the argmax after the root, c[t] vs after c[t-1]."""
    h = 0
    expected = root_pred
    while h < len(cand) and cand[h] == expected:
        expected = cand_preds[h]
        h += 1
    return h


class PoolBlockRun(BlockRun):
    """A Jacobi block whose every iteration also verifies n-gram pool candidates.

    Same state and invariants as :class:`~cllm_bench.decoders.jacobi.BlockRun`. One
    iteration: :meth:`candidates` picks the chains, :meth:`tree_inputs` lays out the
    forward (the unverified suffix ``block[fed_from:]`` then each chain, under a tree
    mask), :meth:`update_with_candidates` applies its argmaxes: the candidate verifying
    the most positions wins over the plain Jacobi update when it verifies more.
    """

    def candidates(self, pool: NGramPool, limit: int) -> list[tuple[int, ...]]:
        """This iteration's chains: up to ``limit`` pool continuations of ``block[fed_from]``
        (the first token known correct but not cached), cut at the block's last position."""
        f = self.fed_from
        return pick_candidates(pool, self.block[f], self.block[f + 1 :], self.size - f - 1, limit)

    def tree_inputs(self, cands: list[tuple[int, ...]]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The forward over :meth:`feed` + ``cands``: ids (k), position offsets from ``base``
        [k] long, tree mask [k, k] bool (:func:`block_with_candidates`)."""
        seg = self.feed()
        offsets, mask = block_with_candidates(len(seg), cands)
        return seg + [t for c in cands for t in c], offsets + self.fed_from, mask

    def update_with_candidates(
        self, predicted: list[int], cands: list[tuple[int, ...]], out: OutputBuffer, trace: Trace
    ) -> tuple[int | None, list[int] | None]:
        """Apply the argmaxes of one forward over :meth:`tree_inputs` (``predicted[j]`` = the
        token after fed position j): extend the output, record the step (``pool_hit``,
        ``candidates``), advance the state.

        Returns ``(next_first, kept)``: the first token of the next block when this one
        ended, else None; ``kept`` = when a candidate won, the fed indices whose KV stays
        (offsets from ``base + fed_from`` as it was before the call, for
        :meth:`SingleEngine.keep`), None when the Jacobi update won (keep ``base + cached_len``).
        """
        seg_len, fed, f = self.size - self.fed_from, len(predicted), self.fed_from
        proposal, mismatch = self.jacobi_proposal(predicted[:seg_len])
        best_end = self.size if mismatch is None else mismatch  # block[:best_end] verified
        best: tuple[int, tuple[int, ...], int] | None = None  # (fed index, candidate, verified tokens)
        s = seg_len
        for cand in cands:
            h = candidate_hits(cand, predicted[0], predicted[s : s + len(cand)])
            if f + 1 + h > best_end:
                best_end, best = f + 1 + h, (s, cand, h)
            s += len(cand)
        if best is None:  # a plain Jacobi iteration
            return self.update(predicted[:seg_len], out, trace, fed, pool_hit=False, candidates=len(cands)), None
        s, cand, h = best
        kept = [0] + list(range(s, s + h))
        bonus = predicted[s + h - 1]
        verified = self.block[: f + 1] + list(cand[:h])  # length best_end
        if best_end >= self.size:  # the whole block is verified: it ends here, no confirming forward
            self.block = verified[: self.size]
            self.states.append(list(self.block))
            return self.complete(bonus, out, trace, fed, fixed_point=False, pool_hit=True, candidates=len(cands)), kept
        state = verified + [bonus] + proposal[best_end + 1 :]
        self.advance(state, best_end, out, trace, fed, pool_hit=True, candidates=len(cands))
        return None, kept


@register_decoder("cllm")
@dataclass
class CLLMDecoder(JacobiDecoder):
    """Jacobi decoding for CLLM checkpoints (``cllm:n=16``), optionally with a lookahead pool.

    lookahead: verify pool n-grams next to the Jacobi block (our construction, see module doc).
    ngram: n-gram size of the pool (a candidate has ngram-1 tokens). g: LRU size per key.
    guesses: candidates verified per forward.
    """

    lookahead: bool = False
    ngram: int = 5
    g: int = 7
    guesses: int = 1

    description = "Jacobi decoding of a CLLM checkpoint; lookahead=true adds an n-gram pool branch (lossless)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.supports_batch = not self.lookahead  # type: ignore[misc]  # the pool branch has no batched path
        if self.ngram < 2:
            raise ValueError(f"ngram must be >= 2, got {self.ngram}")
        if self.g < 1 or self.guesses < 0:
            raise ValueError(f"need g >= 1 and guesses >= 0, got g={self.g}, guesses={self.guesses}")

    def generate_batch(
        self, engine: Any, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        if self.lookahead:
            raise UserError(f"{self.label}: the n-gram pool branch has no batched path; use cllm:lookahead=false at batch size > 1")
        return super().generate_batch(engine, prompts, max_new_tokens, eos_ids)

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        if not self.lookahead:
            return super().generate(engine, prompt_ids, max_new_tokens, eos_ids)
        trace, out, first = greedy_start(engine, prompt_ids, max_new_tokens, eos_ids)
        rng = random.Random(self.seed)
        pool = NGramPool(self.ngram, self.g)
        pool.add_sequence(list(prompt_ids))
        context = list(prompt_ids)
        while not out.done:
            first = self.decode_block_with_pool(engine, trace, out, first, context, rng, pool)
        return out.finish(trace)

    def decode_block_with_pool(
        self,
        engine: SingleEngine,
        trace: Trace,
        out: OutputBuffer,
        first: int,
        context: list[int],
        rng: random.Random,
        pool: NGramPool,
    ) -> int:
        """:meth:`JacobiDecoder.decode_block` where each iteration also verifies pool candidates.

        Same pre/postconditions: ``first`` is the last output token, not cached; returns the
        first token of the next block; the cache then holds exactly the accepted text
        minus that token.
        """
        added_from = len(context)
        run = self.start_block(trace, out, first, context, rng, engine.length, PoolBlockRun)
        pool.add_sequence(context, start=added_from - self.ngram + 1)
        next_first = first
        while True:
            cands = run.candidates(pool, self.guesses)
            ids, offsets, mask = run.tree_inputs(cands)
            start = run.base + run.fed_from
            positions = (offsets + run.base).unsqueeze(0).to(engine.device)
            predicted = engine.forward_greedy(engine.ids_tensor(ids), positions=positions, tree_mask=mask)
            done, kept = run.update_with_candidates(predicted[0].tolist(), cands, out, trace)
            if kept is None:
                engine.rollback(run.base + run.cached_len)  # the verified prefix; drops the candidate chains
            else:
                engine.keep(start, kept)  # block[fed_from] and the winning candidate's verified tokens
            if done is not None:
                next_first = done
                break
            pool.add_sequence(run.block, start=run.fed_from)
            if out.done:
                break
        trace.blocks.append(run.finish(out))
        return next_first
