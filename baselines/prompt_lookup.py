"""``prompt_lookup``: prompt-lookup decoding (Saxena 2023; transformers' ``prompt_lookup_num_tokens``).

No draft model: the last ``ngram`` tokens of prompt + output are looked up in the earlier
text; the tokens that followed the most recent earlier occurrence (up to k) are proposed,
and the target verifies ``[x] + proposal`` in ONE forward, greedily (longest agreeing
prefix + the target's next token). This file holds the proposal algorithm
(:class:`PromptLookupProposer`); the propose -> verify loop is the one every chain
proposer shares, :func:`~cllm_bench.decoders.draft_verify.run_chain`.
When the last ``ngram`` tokens never occurred before, shorter suffixes are tried down to
``min_ngram``; with no match at all the step is a plain AR step (1 token fed, 1 accepted).

The index (:class:`SuffixIndex`) maps every n-gram (n = min_ngram..ngram) of the text to
the start of its most recent occurrence that has a continuation, updated incrementally as
tokens are committed, so a lookup costs O(ngram) instead of a scan of the text.
Departures from transformers' implementation: it scans for the *first* window match;
here the *most recent* occurrence wins (fresher context, usually a better guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cllm_bench.decoders.base import Decoder
from cllm_bench.decoders.draft_verify import Proposal, run_chain
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace

if TYPE_CHECKING:
    import torch


class SuffixIndex:
    """Most recent occurrence of every n-gram (min_n <= n <= max_n) that has a continuation.

    Invariant after :meth:`extend`: for each n, ``last[n][gram]`` is the largest i with
    ``text[i:i+n] == gram`` and ``i + n < len(text)``.
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.text: list[int] = []
        self.last: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}

    def extend(self, tokens: list[int]) -> None:
        """Append tokens and register the n-grams that now have a continuation."""
        old = len(self.text)
        self.text.extend(int(t) for t in tokens)
        for n, table in self.last.items():
            # grams starting at i with i + n < len(text) that were not registered before
            for i in range(max(0, old - n), len(self.text) - n):
                table[tuple(self.text[i : i + n])] = i

    def propose(self, k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the longest matching suffix; also the matched n (0: none)."""
        text = self.text
        for n in range(self.max_n, self.min_n - 1, -1):
            if n > len(text):
                continue
            i = self.last[n].get(tuple(text[-n:]))
            if i is not None:
                return text[i + n : i + n + k], n
        return [], 0


class PromptLookupProposer:
    """Prompt lookup as a :class:`~cllm_bench.decoders.draft_verify.ChainProposer`: a
    :class:`SuffixIndex` over prompt + accepted output, extended as tokens are committed.
    Makes no forward (records no ``draft`` step); each target step records the n-gram
    size it matched (``matched_ngram``, 0: no match, a plain AR step)."""

    def __init__(self, min_ngram: int, ngram: int) -> None:
        self.index = SuffixIndex(min_ngram, ngram)

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: torch.Tensor | None) -> None:
        self.index.extend(list(prompt_ids) + [first])

    def propose(self, budget: int, trace: Trace) -> Proposal:
        tokens, matched = self.index.propose(budget)
        return Proposal(tokens, info={"matched_ngram": matched})

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        return {"matched_ngram": proposal.info["matched_ngram"]}

    def commit(self, proposal: Proposal, accepted: list[int], hidden: torch.Tensor | None) -> None:
        self.index.extend(accepted)


@register_decoder("prompt_lookup")
@dataclass
class PromptLookupDecoder(Decoder):
    """Prompt lookup: propose up to k tokens copied from the text after a matching n-gram.

    ngram: longest suffix matched (tried first); min_ngram: shortest suffix tried.
    k: tokens proposed per step (capped by the tokens still needed).
    """

    ngram: int = 3
    k: int = 10
    min_ngram: int = 1

    description = "prompt-lookup decoding: n-gram copy from prompt+output, verified in one forward (lossless)"

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.ngram:
            raise ValueError(f"need 1 <= min_ngram <= ngram, got min_ngram={self.min_ngram}, ngram={self.ngram}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        proposer = PromptLookupProposer(self.min_ngram, self.ngram)
        return run_chain(engine, proposer, prompt_ids, max_new_tokens, eos_ids, self.k)
