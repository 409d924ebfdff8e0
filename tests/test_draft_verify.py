"""cllm_bench.decoders.draft_verify: the one propose -> score -> verify loop, driven by the
toy chain proposer of docs/extending.md and by proposers that guess wrong on purpose."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.decoders.draft_verify import Proposal, proposal_budget, run_chain
from cllm_bench.engines import Engine
from cllm_bench.plugins import load_module_file
from cllm_bench.registry import DECODERS, TASKS
from cllm_bench.trace import Trace, check_trace
from conftest import prompts
from test_baselines import NO_EOS, cyclic_model, eos_mid_output, run

ECHO_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ngram_echo_decoder.py"


@pytest.fixture(autouse=True)
def _isolated_registries():
    """The example plugin registers ngram_echo: leave the registries and modules as found."""
    state = (DECODERS.snapshot(), TASKS.snapshot())
    modules = set(sys.modules)
    yield
    DECODERS.restore(state[0])
    TASKS.restore(state[1])
    for name in set(sys.modules) - modules:
        if name.startswith("cllm_bench_plugin_"):
            del sys.modules[name]


class EchoProposer:
    """docs/extending.md's chain proposer: continue the output's own period."""

    def __init__(self, ngram: int, max_period: int) -> None:
        self.propose_from = load_module_file(ECHO_EXAMPLE).echo_proposal  # also registers ngram_echo
        self.ngram, self.max_period = ngram, max_period
        self.output: list[int] = []

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: Any) -> None:
        self.output = [first]

    def propose(self, budget: int, trace: Trace) -> Proposal:
        return Proposal(self.propose_from(self.output, self.ngram, budget, self.max_period))

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        return {}

    def commit(self, proposal: Proposal, accepted: list[int], hidden: Any) -> None:
        self.output += accepted


class WrongProposer:
    """Proposes ``budget`` copies of one token and records a fake one-token draft forward
    per proposed token: the loop must stay lossless and keep the draft steps."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.started = False
        self.committed: list[list[int]] = []

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: Any) -> None:
        self.started = True

    def propose(self, budget: int, trace: Trace) -> Proposal:
        for _ in range(budget):
            trace.record("draft", fed=1, accepted=0)
        return Proposal([self.token] * budget, info={"budget": budget})

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        return {"budget": proposal.info["budget"], "draft_accepted": len(accepted) - 1}

    def commit(self, proposal: Proposal, accepted: list[int], hidden: Any) -> None:
        self.committed.append(list(accepted))


class FeatureProposer(WrongProposer):
    """A proposer that asks for the target's hidden states (as an EAGLE-style head would)."""

    def __init__(self, token: int) -> None:
        super().__init__(token)
        self.prompt_hidden: Any = None
        self.hidden_rows: list[int] = []

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: Any) -> None:
        super().start(prompt_ids, first, trace, hidden)
        self.prompt_hidden = hidden

    def commit(self, proposal: Proposal, accepted: list[int], hidden: Any) -> None:
        super().commit(proposal, accepted, hidden)
        assert hidden is not None and hidden.shape[1] == self.prompt_hidden.shape[1]
        self.hidden_rows.append(hidden.shape[0])


def test_proposal_budget_leaves_room_for_the_bonus_token():
    assert proposal_budget(5, 10) == 5
    assert proposal_budget(5, 3) == 2
    assert proposal_budget(5, 1) == 0
    assert proposal_budget(5, 0) == 0


def test_the_docs_proposer_gives_the_example_decoders_trace():
    model = cyclic_model()
    for max_new in (1, 2, 9, 60):
        engine = Engine(model)
        proposer = EchoProposer(2, 32)
        trace = run_chain(engine, proposer, [20, 30, 40], max_new, NO_EOS, k=8)
        check_trace(trace, max_new, NO_EOS)
        reference = run(model, "ngram_echo:k=8", [20, 30, 40], max_new)
        assert trace.tokens == reference.tokens == run(model, "ar", [20, 30, 40], max_new).tokens
        assert [(s.kind, s.fed, s.accepted, s.proposed) for s in trace.steps] == [
            (s.kind, s.fed, s.accepted, s.proposed) for s in reference.steps
        ]
        assert engine.forwards == len(trace.steps)


@pytest.mark.parametrize("max_new", [1, 2, 7, 33])
def test_wrong_guesses_stay_lossless_and_keep_the_proposers_steps(llama64, max_new):
    for prompt in prompts(2, seed=5):
        engine = Engine(llama64)
        proposer = WrongProposer(token=7)
        trace = run_chain(engine, proposer, prompt, max_new, NO_EOS, k=3)
        check_trace(trace, max_new, NO_EOS)
        assert trace.tokens == run(llama64, "ar", prompt, max_new).tokens
        assert engine.forwards == sum(1 for s in trace.steps if s.kind != "draft")
        target = [s for s in trace.steps if s.kind == "target"]
        assert proposer.started == (max_new > 1)
        assert [len(a) for a in proposer.committed] == [s.accepted for s in target]
        for step in target:
            assert step.proposed == step.info["budget"] <= 3 and step.fed == step.proposed + 1
            assert step.accepted == step.info["draft_accepted"] + 1
        assert sum(s.kind == "draft" for s in trace.steps) == sum(s.proposed for s in target)


def test_eos_inside_an_accepted_chain_ends_the_output(llama64):
    prompt = prompts(1, seed=9)[0]
    eos, ar_tokens = eos_mid_output(llama64, prompt)
    trace = run_chain(Engine(llama64), WrongProposer(token=3), prompt, 40, eos, k=4)
    check_trace(trace, 40, eos)
    assert trace.tokens == ar_tokens and trace.stop_reason == "eos"


def test_prompt_lookup_and_speculative_run_on_the_loop(llama64):
    """Both built-ins are thin proposers over run_chain: their steps carry their own fields."""
    prompt = prompts(1, seed=2)[0]
    lookup = run(llama64, "prompt_lookup:k=4", prompt, 20)
    assert all("matched_ngram" in s.info and "draft_accepted" not in s.info for s in lookup.steps[1:])
    spec = run(llama64, "speculative:draft=self:layers=1,k=3", prompt, 20)
    assert [s.kind for s in spec.steps[:2]] == ["prefill", "draft"] and spec.steps[1].info == {"prefill": True}
    assert all(set(s.info) == {"draft_accepted"} for s in spec.steps if s.kind == "target")
    assert lookup.tokens == spec.tokens == build_decoder("ar").generate(Engine(llama64), prompt, 20, NO_EOS).tokens


def test_a_feature_proposer_gets_the_targets_hidden_states(llama64):
    prompt = prompts(1, seed=4)[0]
    engine = Engine(llama64)
    proposer = FeatureProposer(token=5)
    trace = run_chain(engine, proposer, prompt, 17, NO_EOS, k=3, target_hidden=True)
    assert trace.tokens == run(llama64, "ar", prompt, 17).tokens
    assert engine.forwards == sum(1 for s in trace.steps if s.kind != "draft")
    reference = Engine(llama64)
    reference.reset()
    _, clean = reference.forward(reference.ids_tensor(prompt), output_hidden=True)
    assert proposer.prompt_hidden.shape == (len(prompt), 64)
    assert torch.allclose(proposer.prompt_hidden, clean[0])
    assert proposer.hidden_rows == [len(a) for a in proposer.committed]  # one row per accepted token
    plain = WrongProposer(token=5)
    run_chain(Engine(llama64), plain, prompt, 17, NO_EOS, k=3)
    assert plain.committed == proposer.committed
