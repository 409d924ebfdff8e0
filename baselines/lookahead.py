"""``lookahead``: lookahead decoding (LADE, Fu et al. 2024), greedy and lossless.

One target forward per step feeds three things after the committed cache (P = position
of the last accepted token ``x``, which is not cached yet):

* the **lookahead branch**, a 2-D window of N-1 levels: ``B0 = [x] + L0`` (W tokens at
  positions P..P+W-1, a causal chain) and levels ``L1..L_{N-2}`` (W tokens each, ``Lℓ[j]``
  at position P+j+ℓ). ``Lℓ[j]`` attends to ``B0[0..j]`` and to column j of levels 1..ℓ, so
  every column j is one chain ``B0[0..j], L1[j], .., Lℓ[j]`` of consecutive positions and
  its output ``R[j]`` (at the top level) guesses position P+j+N-1;
* the **verification branch**: up to G candidate (N-1)-grams ``c`` from the pool under key
  ``x``, each a chain at positions P+1..P+N-1 that attends to ``x`` and its own prefix only;
* ``x`` itself (``B0[0]``), whose argmax is the ordinary greedy token (>= 1 token per step).

Layout of the fed block (k tokens) and its tree mask (see :func:`step_layout`)::

    [ B0 (b) | L1 (b) | ... | L_{m-1} (b) | c_1 (N-1) | ... | c_C (N-1) ]

Greedy verification (:func:`~cllm_bench.decoders.verify.tree_accept`) accepts the
longest candidate prefix that matches the target's own argmaxes plus the bonus token
(``cap=true``: at most N-1 tokens, as the reference code does). The KV of ``x`` and of the
accepted candidate tokens is kept with :meth:`SingleEngine.keep`; everything else is dropped.

After a full step the pool gets the W n-grams ``(B0[j], L1[j], .., L_{N-2}[j], R[j])`` and
the window slides by exactly one position: ``L0 <- L1[1:]``, ``Lℓ <- Lℓ+1``, ``L_{N-2} <- R``.

Warm-up (no verification, 1 token per step, as the reference): ``L0`` starts with
W+N-3 tokens drawn with replacement from the prompt (seeded RNG); each warm-up step keeps
every level, drops its first column and adds ``R[1:]`` as a new top level; after N-2 steps
the window has its steady shape (``L0``: W-1 tokens, other levels W). Departure: the
reference folds the first warm-up step into the prefill (prompt + L0 in one causal
forward); here the prefill is the prompt alone, so warm-up takes one more decode step.

Losslessness: every accepted token is the argmax given exactly the committed prefix
(the mask shows a candidate row nothing but the cache, ``x`` and its own verified
prefix, at the right positions), so the output equals ``ar`` token for token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cllm_bench.decoders.ngram_pool import NGramPool
from cllm_bench.decoders.verify import tree_accept
from cllm_bench.decoders.base import Decoder, OutputBuffer, greedy_start
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


@dataclass(frozen=True)
class StepLayout:
    """Where everything sits in one lookahead forward.

    ids: the k fed tokens. offsets: [k] positions relative to P (the position of x).
    mask: [k, k] bool tree mask (row i may attend to new token j).
    width: b, the length of B0 and of every level >= 1. levels: m, number of levels (B0 incl.).
    cand_start: index of the first candidate token; cand_len: N-1.
    """

    ids: list[int]
    offsets: torch.Tensor
    mask: torch.Tensor
    width: int
    levels: int
    cand_start: int
    cand_len: int

    def top_level(self) -> slice:
        """Block indices of the top level (whose argmaxes are the new guesses R)."""
        return slice((self.levels - 1) * self.width, self.levels * self.width)

    def level(self, index: int) -> slice:
        return slice(index * self.width, (index + 1) * self.width)

    def candidate_index(self, cand: int, token: int) -> int:
        return self.cand_start + cand * self.cand_len + token


def step_layout(x: int, levels: list[list[int]], candidates: list[tuple[int, ...]], cand_len: int) -> StepLayout:
    """Build ids, relative positions and the [k, k] mask of one lookahead step.

    levels: ``[L0, L1, .., L_{m-1}]``; ``B0 = [x] + L0`` has length b and every level >= 1
    has length b too (an invariant of the window). candidates: C tuples of ``cand_len``
    tokens. k = m*b + C*cand_len.
    """
    b = len(levels[0]) + 1
    m = len(levels)
    for lvl in levels[1:]:
        if len(lvl) != b:
            raise AssertionError(f"lookahead window out of shape: level of {len(lvl)} tokens, B0 of {b}")
    ids = [x] + list(levels[0])
    offsets = list(range(b))
    for ell in range(1, m):
        ids.extend(levels[ell])
        offsets.extend(j + ell for j in range(b))
    cand_start = len(ids)
    for cand in candidates:
        ids.extend(cand)
        offsets.extend(range(1, cand_len + 1))
    k = len(ids)
    mask = torch.zeros(k, k, dtype=torch.bool)
    tri = torch.ones(b, b, dtype=torch.bool).tril()
    eye = torch.eye(b, dtype=torch.bool)
    for ell in range(m):
        rows = slice(ell * b, (ell + 1) * b)
        mask[rows, 0:b] = tri  # B0[0..j]
        for prev in range(1, ell + 1):  # column j of levels 1..ell (itself included)
            mask[rows, prev * b : (prev + 1) * b] |= eye
    chain = torch.ones(cand_len, cand_len, dtype=torch.bool).tril()
    for i in range(len(candidates)):
        s = cand_start + i * cand_len
        mask[s : s + cand_len, s : s + cand_len] = chain
        mask[s : s + cand_len, 0] = True  # x
    return StepLayout(
        ids=ids,
        offsets=torch.tensor(offsets, dtype=torch.long),
        mask=mask,
        width=b,
        levels=m,
        cand_start=cand_start,
        cand_len=cand_len,
    )


def verify_candidates(
    x: int, candidates: list[tuple[int, ...]], layout: StepLayout, predicted: list[int]
) -> tuple[list[int], list[int]]:
    """Greedy verification of the candidate branch.

    predicted: argmax at every block index. Returns ``(kept, accepted)``: ``kept`` = block
    indices of the verified candidate tokens (in order), ``accepted`` = those tokens plus
    the bonus (the argmax after the last of them, or after ``x`` when none matched).
    """
    tokens, parents, where = [x], [-1], [0]
    for i, cand in enumerate(candidates):
        for t, tok in enumerate(cand):
            tokens.append(tok)
            parents.append(0 if t == 0 else len(tokens) - 2)
            where.append(layout.candidate_index(i, t))
    path, accepted = tree_accept(tokens, parents, [predicted[w] for w in where])
    return [where[node] for node in path], accepted


def slide_window(levels: list[list[int]], guesses: list[int], full: bool) -> list[list[int]]:
    """The window of the next step (it slides by exactly one position).

    levels: ``[L0, .., L_{m-1}]``; guesses: R, the argmaxes at the top level (b tokens).
    full (m == N-1): drop L0, shift every level down, R becomes the top level, and the new
    L0 loses its first token. Warm-up (m < N-1): every level loses its first token and
    ``R[1:]`` becomes a new top level.
    """
    if full:
        shifted = [list(lvl) for lvl in levels[1:]] + [list(guesses)]
        return [shifted[0][1:]] + shifted[1:]
    return [list(lvl[1:]) for lvl in levels] + [list(guesses[1:])]


def column_ngrams(x: int, levels: list[list[int]], guesses: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """The W n-grams of a full window: ``(B0[j], (L1[j], .., L_{N-2}[j], R[j]))`` per column j."""
    b0 = [x] + list(levels[0])
    return [(b0[j], tuple(lvl[j] for lvl in levels[1:]) + (guesses[j],)) for j in range(len(b0))]


@register_decoder("lookahead")
@dataclass
class LookaheadDecoder(Decoder):
    """Lookahead decoding: window W, n-gram size N, at most G verified guesses per step.

    Defaults N=5, W=7, G=7 are the reference README's "use in your own code" values.
    cap: accept at most N-1 tokens per step (the reference's behaviour, which drops the
    bonus token after a full match); default False accepts up to N.
    pool_from_prompt: pre-fill the pool with the prompt's n-grams and add the output's
    n-grams as they are committed (reference ``POOL_FROM_PROMPT``).
    seed: RNG seed of the initial window (tokens drawn from the prompt).
    """

    w: int = 7
    n: int = 5
    g: int = 7
    cap: bool = False
    pool_from_prompt: bool = True
    seed: int = 0

    description = "lookahead decoding (2-D Jacobi window + n-gram pool, one forward per step; lossless)"

    def __post_init__(self) -> None:
        if self.w < 1:
            raise ValueError(f"w must be >= 1, got {self.w}")
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")
        if self.g < 1:
            raise ValueError(f"g must be >= 1, got {self.g}")

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace, out, x = greedy_start(engine, prompt_ids, max_new_tokens, eos_ids)
        rng = random.Random(self.seed)
        pool = NGramPool(self.n, self.g)
        text = list(prompt_ids)  # prompt + output, for the pool
        if self.pool_from_prompt:
            pool.add_sequence(text)
        levels = [[text[rng.randrange(len(text))] for _ in range(self.w + self.n - 3)]]
        while not out.done:
            text_len = len(text)
            text.extend(out.tokens[text_len - trace.prompt_len :])
            if self.pool_from_prompt:
                pool.add_sequence(text, start=text_len - self.n + 1)
            levels = self.step(engine, trace, out, pool, x, levels)
            x = out.tokens[-1]
        return out.finish(trace)

    def step(
        self,
        engine: SingleEngine,
        trace: Trace,
        out: OutputBuffer,
        pool: NGramPool,
        x: int,
        levels: list[list[int]],
    ) -> list[list[int]]:
        """One forward: lookahead branch + verification branch. Returns the next window.

        Precondition: ``x`` is the last output token and the cache holds everything before
        it. Postcondition: the cache holds ``x`` and the accepted tokens but the last.
        """
        full = len(levels) == self.n - 1
        candidates = pool.get(x)[-self.g :] if full else []
        layout = step_layout(x, levels, candidates, self.n - 1)
        start = engine.length
        positions = (layout.offsets + start).unsqueeze(0).to(engine.device)
        predicted = engine.forward_greedy(engine.ids_tensor(layout.ids), positions=positions, tree_mask=layout.mask)[0].tolist()
        kept, accepted = verify_candidates(x, candidates, layout, predicted)
        if self.cap:
            accepted = accepted[: self.n - 1]
            kept = kept[: len(accepted) - 1]
        engine.keep(start, [0] + kept)
        taken = out.accept(accepted)
        trace.record(
            "target",
            fed=len(layout.ids),
            accepted=taken,
            proposed=len(candidates) * (self.n - 1),
            accepted_len=len(accepted),
            hit=bool(kept),
            candidates=len(candidates),
            warmup=not full,
        )
        guesses = predicted[layout.top_level()]
        if full:
            for key, cont in column_ngrams(x, levels, guesses):
                pool.add(key, cont)
        return slide_window(levels, guesses, full)
