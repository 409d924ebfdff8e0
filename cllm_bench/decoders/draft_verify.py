"""The draft -> verify loop every chain-speculating decoder shares.

In the spirit of vLLM's proposer / scorer / verifier split and transformers' candidate
generators: a decoder that guesses a *chain* of tokens (a draft model, prompt lookup, an
n-gram echo, a feature-level draft head drafting a chain) writes only its proposer — a
:class:`ChainProposer` — and :func:`run_chain` does the rest, identically for all of them:

1. prefill the target; its argmax (sampled when ``temperature > 0``) is the first output
   token x, recorded as the ``prefill`` step; :meth:`ChainProposer.start` primes the
   proposer on the prompt and x (and the prompt's final hidden states, for a proposer
   that drafts from the target's features);
2. every step: :meth:`ChainProposer.propose` offers d_1..d_k (k <= the budget
   :func:`proposal_budget`, recording its own forwards as ``draft`` steps);
3. the **scorer**: ONE target forward over ``[x, d_1..d_k]`` (:func:`score_chain`);
4. the **verifier**: :func:`~cllm_bench.decoders.verify.chain_accept` (greedy: the longest
   prefix that agrees with the target's argmaxes + the target's next token) or
   :func:`~cllm_bench.decoders.verify.sample_accept` (speculative sampling, with the
   proposal's draft distributions), giving 1..k+1 tokens;
5. the target cache is rolled back to x + the accepted drafts, the tokens go through the
   :class:`~cllm_bench.decoders.base.OutputBuffer`, the ``target`` step is recorded
   (``fed = k + 1``, ``proposed = k``, plus :meth:`ChainProposer.step_info`), and
   :meth:`ChainProposer.commit` lets the proposer update its own state and caches; the
   last accepted token is the next x (not cached: it is fed by the next forward).

A proposer that drafts from the target's features (EAGLE-style) runs the loop with
``target_hidden=True``: the prefill then computes the prompt's final hidden states
(:func:`~cllm_bench.decoders.base.prefill_all_hidden`), every verification forward its
fed positions', and :meth:`~ChainProposer.start` / :meth:`~ChainProposer.commit` receive
those of the prompt / of x and the accepted drafts. Tree-shaped proposals (Medusa, EAGLE
trees, lookahead's n-gram branch) verify with :func:`~cllm_bench.decoders.verify.verify_tree`
instead; they do not use this loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cllm_bench.decoders.base import OutputBuffer, prefill_all_hidden
from cllm_bench.decoders.verify import chain_accept, sample_accept
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.trace import Trace


@dataclass
class Proposal:
    """What a proposer offers for one verification forward.

    tokens: d_1..d_k (k >= 0), to follow x, the last accepted token.
    dists: when sampling, the k draft distributions q_1..q_k ([V] each) the tokens were
        drawn from (:func:`~cllm_bench.decoders.verify.sample_accept` needs them); empty
        when greedy.
    info: the proposer's own notes on this proposal (e.g. the n-gram it matched), read back
        by its :meth:`ChainProposer.step_info` and :meth:`ChainProposer.commit`; the loop
        never looks inside.
    """

    tokens: list[int]
    dists: list[torch.Tensor] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class ChainProposer(Protocol):
    """Proposes chains of tokens for :func:`run_chain` to verify; one object per generation.

    Call order: :meth:`start` once (after the target prefill, only when more output is
    wanted), then per step :meth:`propose`, :meth:`step_info`, :meth:`commit`. Between
    steps the proposer's view of the text is prompt + every accepted token; whatever it
    caches (a draft model's KV) must hold only accepted text after :meth:`commit`.
    """

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: torch.Tensor | None) -> None:
        """Prime on the prompt and the first output token ``first``; record any forward it
        makes as a ``draft`` step (e.g. a draft model's prefill). ``hidden``: the target's
        final hidden states of the prompt [T, H] with ``target_hidden``, else None."""

    def propose(self, budget: int, trace: Trace) -> Proposal:
        """At most ``budget`` (>= 0) tokens to follow the accepted text; record every forward
        made to find them as a ``draft`` step (``accepted=0``)."""

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        """Decoder-specific fields of the ``target`` step that verified ``proposal``
        (``Step.info``, e.g. ``draft_accepted``), given what it accepted."""

    def commit(self, proposal: Proposal, accepted: list[int], hidden: torch.Tensor | None) -> None:
        """Verification accepted ``accepted`` = ``proposal.tokens[:m]`` + one target token
        (1 <= len = m + 1 <= k + 1; the last is the next x): update state and caches to
        match. ``hidden``: with ``target_hidden``, the target's final hidden states [m+1, H]
        of x, d_1..d_m (row i is the feature that predicted ``accepted[i]``), else None."""


def proposal_budget(k: int, remaining: int) -> int:
    """Tokens worth proposing when ``remaining`` output tokens are still wanted: at most
    ``k``, and never so many that the bonus token would fall past the end."""
    return max(0, min(k, remaining - 1))


def pick_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[int, torch.Tensor | None]:
    """Greedy (``temperature`` <= 0) or sampled token from logits [V]; also the distribution
    [V] (float64) it was sampled from, None when greedy."""
    if temperature <= 0:
        return int(logits.argmax()), None
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator)), probs


def chain_start(
    engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int],
    temperature: float = 0.0, generator: torch.Generator | None = None, target_hidden: bool = False,
) -> tuple[Trace, OutputBuffer, int, torch.Tensor | None]:  # fmt: skip
    """:func:`~cllm_bench.decoders.base.greedy_start` with the first token sampled at
    ``temperature`` > 0 and, with ``target_hidden``, the prompt's final hidden states [T, H]
    (:func:`~cllm_bench.decoders.base.prefill_all_hidden`; else None). Returns
    ``(trace, out, first, hidden)``; the cache holds the prompt, not ``first``."""
    trace = Trace(prompt_len=len(prompt_ids))
    out = OutputBuffer(max_new_tokens, eos_ids)
    if target_hidden:
        logits, hidden = prefill_all_hidden(engine, prompt_ids)
    else:
        logits, hidden = engine.prefill(prompt_ids), None
    first, _ = pick_token(logits, temperature, generator)
    trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([first]))
    return trace, out, first, hidden


def score_chain(
    target: SingleEngine, x: int, tokens: list[int], target_hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One target forward over ``[x, d_1..d_k]``: logits [k+1, V] (row i follows x, d_1..d_i)
    and, with ``target_hidden``, the final hidden states [k+1, H] (else None)."""
    ids = target.ids_tensor([x] + tokens)
    if target_hidden:
        logits, hidden = target.forward(ids, output_hidden=True)
        return logits[0], hidden[0]
    return target.forward(ids)[0], None


def run_chain(
    engine: SingleEngine,
    proposer: ChainProposer,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_ids: frozenset[int],
    k: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    target_hidden: bool = False,
) -> Trace:
    """Decode after ``prompt_ids`` by propose -> score -> verify steps (the module docstring).

    k: the most tokens proposed per step (:func:`proposal_budget` caps it at the end).
    temperature: 0 = greedy verification (output equals ``ar``); > 0 = speculative
    sampling with ``generator``, the proposal carrying its draft distributions.
    target_hidden: hand the proposer the target's final hidden states (module docstring).
    """
    trace, out, x, hidden = chain_start(engine, prompt_ids, max_new_tokens, eos_ids, temperature, generator,
                                        target_hidden)  # fmt: skip
    if not out.done:
        proposer.start(prompt_ids, x, trace, hidden)
    while not out.done:
        x = verify_step(engine, proposer, trace, out, x, k, temperature, generator, target_hidden)
    return out.finish(trace)


def verify_step(
    engine: SingleEngine,
    proposer: ChainProposer,
    trace: Trace,
    out: OutputBuffer,
    x: int,
    k: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    target_hidden: bool = False,
) -> int:
    """One propose -> score -> verify step after x (the last output token, not cached).

    Afterwards the target cache holds the accepted text minus the returned token (the new x)
    and the proposer has been told what was accepted.
    """
    proposal = proposer.propose(proposal_budget(k, out.remaining), trace)
    start = engine.length
    if temperature > 0 or target_hidden:  # the logits (sampling) or the hidden states are needed
        logits, hidden = score_chain(engine, x, proposal.tokens, target_hidden)
        accepted = (sample_accept(proposal.tokens, proposal.dists, logits, temperature, generator) if temperature > 0
                    else chain_accept(proposal.tokens, logits.argmax(dim=-1).tolist()))  # fmt: skip
    else:  # greedy: only the target's argmaxes leave its step
        hidden = None
        accepted = chain_accept(proposal.tokens, engine.forward_greedy(engine.ids_tensor([x] + proposal.tokens))[0].tolist())
    engine.rollback(start + len(accepted))  # x and the accepted drafts d_1..d_m
    taken = out.accept(accepted)
    proposed = len(proposal.tokens)
    info = proposer.step_info(proposal, accepted)
    trace.record("target", fed=1 + proposed, accepted=taken, proposed=proposed, **info)
    proposer.commit(proposal, accepted, None if hidden is None else hidden[: len(accepted)])
    return accepted[-1]
