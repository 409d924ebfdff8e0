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
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from cllm_bench.decoders.ngram_pool import NGramPool
from cllm_bench.decoders.base import OutputBuffer, greedy_start
from cllm_bench.decoders.jacobi import JacobiDecoder, first_mismatch, initial_guess
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.errors import UserError
from cllm_bench.registry import register_decoder
from cllm_bench.trace import JacobiBlock, Trace


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
        size = min(self.n, out.remaining + 1)
        start_in_output = len(out.tokens) - 1
        added_from = len(context)
        context.extend(out.tokens[len(context) - trace.prompt_len :])
        pool.add_sequence(context, start=added_from - self.ngram + 1)
        block = initial_guess(first, size, context, self.init, rng)
        states = [list(block)]
        base = engine.length
        fed_from = 0  # block[:fed_from] cached, block[fed_from] correct
        known = 1  # block[:known] are output tokens
        block_index = len(trace.blocks)
        next_first = first
        while True:
            seg = block[fed_from:]
            room = size - fed_from - 1
            cands = pick_candidates(pool, block[fed_from], block[fed_from + 1 :], room, self.guesses)
            offsets, mask = block_with_candidates(len(seg), cands)
            ids = seg + [t for c in cands for t in c]
            positions = (offsets + base + fed_from).unsqueeze(0).to(engine.device)
            logits = engine.forward(engine.ids_tensor(ids), positions=positions, tree_mask=mask)
            predicted = logits[0].argmax(dim=-1).tolist()
            jacobi_pred = predicted[: len(seg)]
            proposal = block[: fed_from + 1] + jacobi_pred[:-1]
            mismatch = first_mismatch(block, proposal, fed_from + 1)
            jacobi_end = size if mismatch is None else mismatch  # block[:jacobi_end] verified
            best_end, best = jacobi_end, None
            s = len(seg)
            for cand in cands:
                h = candidate_hits(cand, predicted[0], predicted[s : s + len(cand)])
                if fed_from + 1 + h > best_end:
                    best_end, best = fed_from + 1 + h, (s, cand, h)
                s += len(cand)
            if best is not None:
                s, cand, h = best
                engine.keep(base + fed_from, [0] + list(range(s, s + h)))
                bonus = predicted[s + h - 1]
                verified = block[: fed_from + 1] + list(cand[:h])  # length best_end
                if best_end >= size:  # the whole block is verified: it ends here
                    block = verified[:size]
                    states.append(list(block))
                    accepted = out.accept(block[known:] + [bonus])
                    trace.record("target", fed=len(ids), accepted=accepted, block=block_index, fixed_point=False,
                                 pool_hit=True, candidates=len(cands))  # fmt: skip
                    next_first = bonus
                    break
                block = verified + [bonus] + proposal[best_end + 1 :]
                states.append(list(block))
                accepted = out.accept(block[known : best_end + 1])
                trace.record("target", fed=len(ids), accepted=accepted, block=block_index, fixed_point=False,
                             pool_hit=True, candidates=len(cands))  # fmt: skip
                known, fed_from = best_end + 1, best_end
                pool.add_sequence(block, start=fed_from)
                if out.done:
                    break
                continue
            if mismatch is None:  # fixed point: the whole block is final, the last argmax is the bonus
                engine.rollback(base + size)  # drop the candidate chains
                accepted = out.accept(block[known:] + jacobi_pred[-1:])
                trace.record("target", fed=len(ids), accepted=accepted, block=block_index, fixed_point=True,
                             pool_hit=False, candidates=len(cands))  # fmt: skip
                next_first = jacobi_pred[-1]
                break
            engine.rollback(base + mismatch)
            block = proposal
            states.append(list(block))
            accepted = out.accept(block[known : mismatch + 1])
            trace.record("target", fed=len(ids), accepted=accepted, block=block_index, fixed_point=False,
                         pool_hit=False, candidates=len(cands))  # fmt: skip
            known, fed_from = mismatch + 1, mismatch
            pool.add_sequence(block, start=fed_from)
            if out.done:
                break
        trace.blocks.append(JacobiBlock(states=states, final=out.tokens[start_in_output : start_in_output + size]))
        return next_first
