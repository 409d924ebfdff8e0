"""Many Jacobi states of one prompt in ONE forward: the packed layout shared by the fast
trajectory collector and the packed CLLM training step.

Notation: prompt ``p`` (L tokens), answer ``y*`` (A tokens, the target's greedy answer),
``full = p + y*``. The KV of ``full[:L-1]`` (P = L-1 positions) is computed once, without
gradients, and kept in a cache. Every logit that predicts an answer token comes from a
*segment* of tokens fed after that cache:

* the **AR segment** (optional): ``[full[L-1]] + y*[:-1]`` at positions L-1 .. L+A-2; its
  logit j predicts ``y*[j]`` given ``p + y*[:j]``: the teacher-forced pass that gives the AR
  loss and, detached, the global consistency target;
* a **state segment** for a block state ``s`` (m tokens) of the block that starts at answer
  index ``a``: ``[full[L-1+a]] + s[:-1]`` at positions L-1+a .. L-2+a+m; its logit j
  predicts block token j given ``p + y*[:a] + s[:j]``, exactly what the model computes on
  ``p + y*[:a] + s`` (the Jacobi iteration / the consistency student).

Attention (:func:`packed_mask`): every segment sees the whole cache; a state segment also
sees the answer context ``full[L-1 .. L-2+a]`` — in the AR segment when there is one, else
in the cache, which then holds ``full[:L-1+A_ctx]``; inside a segment attention is causal;
segments never see each other otherwise. Position ids repeat across segments, so each
segment's logits equal those of its own separate forward (tested in float64).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cllm_bench.engines import kv_cache


@dataclass(frozen=True)
class StateSegment:
    """One block state to feed: the block starts at answer index ``start``; ``state`` has
    the block's length m (its first token is the block's known first token)."""

    start: int
    state: tuple[int, ...]


@dataclass
class PackedInput:
    """The tensors of one packed forward (batch 1).

    ids, positions: [1, T] long. allowed: [T, C + T] bool (C = cache length; row i may
    attend to column j). ar_index: [A'] indices into T of the AR segment (empty without
    one). seg_index: one [m] long tensor per state segment, indices into T.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor
    ar_index: torch.Tensor
    seg_index: list[torch.Tensor]


def block_spans(answer_len: int, n: int) -> list[tuple[int, int]]:
    """[start, end) of the Jacobi blocks that tile an answer of ``answer_len`` tokens with
    n-token blocks (the last one shorter), as the ``jacobi`` decoder forms them."""
    return [(a, min(a + n, answer_len)) for a in range(0, answer_len, n)]


def pack(
    prompt: Sequence[int],
    answer: Sequence[int],
    segments: Sequence[StateSegment],
    *,
    cache_len: int,
    with_ar: bool,
) -> PackedInput:
    """The packed forward for ``segments`` (see the module docstring).

    cache_len: positions of ``full`` already in the cache (>= L-1; with ``with_ar`` it must
    be exactly L-1). Every segment's context ``full[:L-1+start]`` must be available: in the
    cache or (``with_ar``) the AR segment.
    """
    full = list(prompt) + list(answer)
    L, A = len(prompt), len(answer)
    if L < 1:
        raise ValueError("the prompt must hold at least one token")
    if with_ar and cache_len != L - 1:
        raise ValueError("with an AR segment the cache must hold exactly the prompt minus its last token")
    pieces: list[tuple[list[int], int]] = []  # (tokens, first position)
    if with_ar:
        pieces.append((full[L - 1 : L - 1 + A], L - 1))
    for seg in segments:
        m = len(seg.state)
        if m < 1 or seg.start + m > A:
            raise ValueError(f"segment at {seg.start} of {m} tokens does not fit an answer of {A}")
        if not with_ar and cache_len < L - 1 + seg.start:
            raise ValueError("the cache does not hold the context of a segment")
        pieces.append(([full[L - 1 + seg.start]] + list(seg.state[:-1]), L - 1 + seg.start))
    ids = [t for toks, _ in pieces for t in toks]
    positions = [p0 + j for toks, p0 in pieces for j in range(len(toks))]
    T = len(ids)
    allowed = torch.zeros(T, cache_len + T, dtype=torch.bool)
    index: list[torch.Tensor] = []
    offset = 0
    for k, (toks, p0) in enumerate(pieces):
        m = len(toks)
        rows = slice(offset, offset + m)
        is_ar = with_ar and k == 0
        if is_ar:
            allowed[rows, :cache_len] = True
        else:
            context_end = p0  # absolute positions < p0 are the segment's context
            if with_ar:
                allowed[rows, :cache_len] = True
                allowed[rows, cache_len : cache_len + (context_end - (L - 1))] = True  # AR segment part
            else:
                allowed[rows, :context_end] = True
        allowed[rows, cache_len + offset : cache_len + offset + m] = torch.ones(m, m, dtype=torch.bool).tril()
        index.append(torch.arange(offset, offset + m))
        offset += m
    ar_index = index[0] if with_ar else torch.zeros(0, dtype=torch.long)
    seg_index = index[1:] if with_ar else index
    return PackedInput(
        ids=torch.tensor([ids], dtype=torch.long),
        positions=torch.tensor([positions], dtype=torch.long),
        allowed=allowed,
        ar_index=ar_index,
        seg_index=seg_index,
    )


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """[1, 1, T, C+T] float mask: 0 where allowed, dtype-min elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)
    return mask[None, None]


def prefill_cache(model: Any, ids: Sequence[int]) -> Any:
    """A dynamic cache holding the KV of ``ids`` (no gradients). Empty ``ids``: empty cache."""
    cache = kv_cache.new_dynamic_cache(model.config)
    if len(ids):
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.tensor([list(ids)], device=device), **{kv_cache.cache_keyword(model): cache},
                  use_cache=True, logits_to_keep=1)  # fmt: skip
    return cache


def packed_logits(model: Any, packed: PackedInput, cache: Any) -> torch.Tensor:
    """Logits [T, V] of the packed forward over ``cache`` (the cache grows by T; callers
    that reuse it truncate it back). Gradients flow when enabled by the caller."""
    param = next(model.parameters())
    mask = additive_mask(packed.allowed, param.dtype if param.is_floating_point() else torch.float32, param.device)
    out = model(
        input_ids=packed.ids.to(param.device),
        position_ids=packed.positions.to(param.device),
        attention_mask=mask,
        use_cache=True,
        **{kv_cache.cache_keyword(model): cache},  # the name the installed transformers expects
    )
    return out.logits[0]


# --------------------------------------------------------------------------- trajectories
def initial_state(first: int, size: int, context: Sequence[int], init: str, rng: random.Random) -> list[int]:
    """s^0 of a block, drawn exactly as :func:`cllm_bench.decoders.jacobi.initial_guess`."""
    from cllm_bench.decoders.jacobi import initial_guess

    return initial_guess(first, size, list(context), init, rng)


@torch.no_grad()
def jacobi_trajectories(
    model: Any,
    prompt: Sequence[int],
    answer: Sequence[int],
    n: int,
    *,
    seed: int,
    init: str = "random",
    max_new_tokens: int | None = None,
) -> list[list[list[int]]]:
    """The Jacobi states s^0 .. s^K = y* of every block of ``answer`` (the greedy answer of
    ``prompt``), computed for ALL blocks at once: one packed forward per iteration.

    Greedy Jacobi on a block whose context is ``prompt + y*[:a]`` converges to
    ``y*[a:a+m]``, so the blocks are independent given y*; each iteration maps
    ``s -> [s[0]] + (argmax at block tokens 1 .. m-1 given prompt + y*[:a] + s[:j])``. The initial guesses use one RNG
    seeded with ``seed`` in block order, drawing from ``prompt + y*[:a+1]`` like the
    ``jacobi`` decoder (whose block sizes ``min(n, remaining + 1)`` need ``max_new_tokens``;
    default: ``len(answer)``), so the states equal the decoder's trajectory. Returns, per
    block of :func:`block_spans`, its states (each cut to the block's length).
    """
    budget = len(answer) if max_new_tokens is None else max_new_tokens
    rng = random.Random(seed)
    spans = block_spans(len(answer), n)
    full = list(prompt) + list(answer)
    L = len(prompt)
    fixed = [list(answer[a:e]) for a, e in spans]
    current: list[list[int]] = []
    for a, e in spans:
        size = min(n, budget - (a + 1) + 1)  # remaining after the block's first token is known
        guess = initial_state(answer[a], size, full[: L + a + 1], init, rng)
        current.append(guess[: e - a])  # e - a <= size: the answer fits the budget
    states = [[list(s)] for s in current]
    cache = prefill_cache(model, full[: L - 1 + spans[-1][0]] if spans else full[: L - 1])
    base = kv_cache.cache_length(cache)
    for _ in range(n + 1):
        todo = [b for b in range(len(spans)) if current[b] != fixed[b]]
        if not todo:
            break
        packed = pack(prompt, answer, [StateSegment(spans[b][0], tuple(current[b])) for b in todo], cache_len=base, with_ar=False)
        predicted = packed_logits(model, packed, cache).argmax(dim=-1).cpu()
        kv_cache.truncate(cache, base)
        for b, index in zip(todo, packed.seg_index):
            pred = predicted[index].tolist()
            current[b] = [current[b][0]] + pred[1:]  # logit j predicts block token j
            states[b].append(list(current[b]))
    for b in range(len(spans)):
        if states[b][-1] != fixed[b]:  # not converged in n+1 iterations (ties): end at y*
            states[b].append(list(fixed[b]))
    return states


def noised_states(answer: Sequence[int], n: int, per_block: int, vocab_from: Sequence[int], rng: random.Random) -> list[list[list[int]]]:
    """Synthetic intermediate states (the Jacobi Forcing recipe): per block, ``per_block``
    states with a correct prefix of uniformly drawn length 1 .. m-1 and a suffix of tokens
    drawn from ``vocab_from`` (prompt + answer), then y*. No forward needed."""
    out = []
    for a, e in block_spans(len(answer), n):
        block = list(answer[a:e])
        m = len(block)
        states = []
        for _ in range(per_block if m > 1 else 0):
            keep = rng.randrange(1, m)
            states.append(block[:keep] + [vocab_from[rng.randrange(len(vocab_from))] for _ in range(m - keep)])
        out.append(states + [block])
    return out
