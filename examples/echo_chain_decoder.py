"""A plugin decoder written against the propose -> verify protocol (docs/extending.md,
"Draft-and-verify decoders"): the same n-gram echo as ngram_echo_decoder.py, but only the
proposer is written here; the shared loop (`run_chain`) prefills, verifies, rolls back,
stops and records the trace.

    cllm-bench check-decoder echo_chain --include examples/echo_chain_decoder.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cllm_bench import Decoder, SingleEngine, Trace, register_decoder
from cllm_bench.decoders.draft_verify import Proposal, run_chain


def echo_proposal(output: list[int], ngram: int, k: int, max_period: int) -> list[int]:
    """Up to k tokens continuing `output` with the shortest period p <= max_period whose
    last `ngram` tokens repeat p tokens earlier; [] when there is none."""
    if k < 1:
        return []
    tail = output[-ngram:]
    for p in range(1, min(max_period, len(output) - ngram) + 1):
        if output[-ngram - p : -p] == tail:
            cycle = output[-p:]
            return [cycle[i % p] for i in range(k)]
    return []


class EchoProposer:
    """A ChainProposer: continue the output's own period. Makes no forward of its own."""

    def __init__(self, ngram: int, max_period: int) -> None:
        self.ngram, self.max_period = ngram, max_period
        self.output: list[int] = []

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: Any) -> None:
        self.output = [first]

    def propose(self, budget: int, trace: Trace) -> Proposal:
        return Proposal(echo_proposal(self.output, self.ngram, budget, self.max_period))

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        return {}

    def commit(self, proposal: Proposal, accepted: list[int], hidden: Any) -> None:
        self.output += accepted


@register_decoder("echo_chain")
@dataclass
class EchoChainDecoder(Decoder):
    """Echo the output's own period, k tokens per step, through the shared chain loop."""

    ngram: int = 2
    k: int = 8
    max_period: int = 32

    description = "n-gram echo as a ChainProposer on the shared propose -> verify loop (lossless)"

    def __post_init__(self) -> None:
        if min(self.ngram, self.k, self.max_period) < 1:
            raise ValueError("ngram, k and max_period must be >= 1")

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        proposer = EchoProposer(self.ngram, self.max_period)
        return run_chain(engine, proposer, prompt_ids, max_new_tokens, eos_ids, self.k)
