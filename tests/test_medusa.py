"""Medusa: heads module + files, trees, lossless decoding with random / copying / perfect heads."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.baselines.medusa import (
    MEDUSA_DEFAULT_TREE,
    MedusaDecoder,
    build_tree,
    prefill_with_hidden,
    tree_paths,
)
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.medusa_heads import MedusaHeads
from conftest import prompts
from test_baselines import cyclic_model, eos_mid_output, map_matrix, run, tokens_per_forward


def with_heads(model, heads: MedusaHeads, **params) -> MedusaDecoder:
    dec = MedusaDecoder(**params)
    dec.attach_heads(heads.to(torch.float64), model)  # what prepare() stores
    return dec


def test_default_tree_is_the_published_sparse_tree():
    assert len(MEDUSA_DEFAULT_TREE) == 63
    tree = build_tree(tree_paths("default", 4, 10))
    assert len(tree.paths) == 63 and tree.max_depth == 4 and tree.max_rank == 10
    assert tree.mask.shape == (64, 64)
    for i, p in enumerate(tree.paths, start=1):  # each node sees the root, its ancestors and itself
        assert int(tree.mask[i].sum()) == len(p) + 1 and tree.depth[i] == len(p)
    assert len(tree_paths("default", 2, 10)) == len([p for p in MEDUSA_DEFAULT_TREE if len(p) <= 2])
    assert tree_paths("chain", 3, 10) == [(0,), (0, 0), (0, 0, 0)]
    assert len(tree_paths("full", 4, 2)) == 2 + 4 + 8 + 16
    with pytest.raises(ValueError):
        build_tree([(0, 1)])  # no parent (0,)


def test_heads_save_load_roundtrip(tmp_path):
    heads = MedusaHeads.random(64, 96, num_heads=3, num_layers=2, seed=4)
    heads.save(tmp_path / "heads")
    loaded = MedusaHeads.load(tmp_path / "heads", device="cpu", dtype=torch.float64)
    assert loaded.num_heads == 3 and loaded.num_layers == 2 and next(loaded.parameters()).dtype == torch.float64
    x = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(loaded(x), heads.to(torch.float64)(x))
    assert loaded(x).shape == (3, 5, 96)
    with pytest.raises(UserError):
        MedusaHeads.load(tmp_path / "missing")


def test_copy_heads_start_as_the_base_head(llama64):
    heads = MedusaHeads.from_lm_head(llama64.lm_head, num_heads=2)
    h = torch.randn(3, 64, dtype=torch.float64)
    for row in heads(h):
        assert torch.allclose(row, llama64.lm_head(h))


def test_prefill_with_hidden_matches_plain_prefill(qwen64):
    prompt = prompts(1)[0]
    logits, hidden = prefill_with_hidden(Engine(qwen64), prompt)
    plain = Engine(qwen64).prefill(prompt)
    with torch.inference_mode():
        assert torch.allclose(logits, plain) and torch.allclose(qwen64.lm_head(hidden), plain)


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize(
    "spec", ["medusa", "medusa:heads=random:3,tree=chain", "medusa:tree=full,topk=2,seed=1", "medusa:heads=random:1"]
)
def test_random_heads_equal_ar(request, model_fixture, spec):
    model = request.getfixturevalue(model_fixture)
    for prompt in prompts(3, seed=31):
        for max_new in (1, 9, 40):
            assert run(model, spec, prompt, max_new).tokens == run(model, "ar", prompt, max_new).tokens


@pytest.mark.parametrize("tree", ["default", "chain"])
def test_copy_heads_equal_ar(llama64, tree):
    dec = with_heads(llama64, MedusaHeads.from_lm_head(llama64.lm_head, 4), tree=tree)
    for prompt in prompts(2, seed=32):
        assert run(llama64, None, prompt, 33, decoder=dec).tokens == run(llama64, "ar", prompt, 33).tokens


def test_copy_heads_accept_several_tokens_when_the_model_repeats():
    """Base model always continues with 5: a head copying the base head guesses every token right."""
    model = cyclic_model(next_token=lambda t: 5)
    heads = MedusaHeads.from_lm_head(model.lm_head, num_heads=4)
    prompt = [20, 30, 40]
    ar = run(model, "ar", prompt, 41)
    assert set(ar.tokens) == {5}
    for tree in ("default", "chain"):
        trace = run(model, None, prompt, 41, decoder=with_heads(model, heads, tree=tree))
        assert trace.tokens == ar.tokens
        assert tokens_per_forward(trace) > 4  # 5 tokens per step after the prefill


def test_perfect_heads_on_a_cycle():
    """Head h built as the model's own map applied h+2 times: every chain is accepted."""
    f = lambda t: 3 + (t - 2) % 7  # noqa: E731
    model = cyclic_model(next_token=f)
    heads = MedusaHeads(128, 96, num_heads=3, num_layers=1).to(torch.float64)
    with torch.no_grad():
        for h, head in enumerate(heads.heads):
            fh = lambda t, h=h: _iterate(f, t, h + 2)  # noqa: E731
            head.out.weight.copy_(map_matrix(fh, 96, 128))
    prompt = [20, 30]
    trace = run(model, None, prompt, 40, decoder=with_heads(model, heads, tree="chain"))
    assert trace.tokens == run(model, "ar", prompt, 40).tokens
    decode = [s.accepted for s in trace.steps if s.kind == "target"]
    assert decode[:-1] == [4] * (len(decode) - 1)


def _iterate(f, t, times):
    for _ in range(times):
        t = f(t)
    return t


def test_heads_from_a_folder_and_mismatch(tmp_path, llama64):
    from cllm_bench.models import wrap_model

    MedusaHeads.from_lm_head(llama64.lm_head, 2).save(tmp_path / "ok")
    dec = build_decoder(f"medusa:heads={tmp_path / 'ok'}")
    dec.prepare(wrap_model(llama64))
    prompt = prompts(1, seed=3)[0]
    assert run(llama64, None, prompt, 20, decoder=dec).tokens == run(llama64, "ar", prompt, 20).tokens
    MedusaHeads.random(32, 96, 2).save(tmp_path / "wrong")
    with pytest.raises(UserError, match="hidden size"):
        build_decoder(f"medusa:heads={tmp_path / 'wrong'}").prepare(wrap_model(llama64))


def test_medusa_eos_mid_output(qwen64):
    prompt = prompts(1, seed=12)[0]
    eos, expected = eos_mid_output(qwen64, prompt, pos=9)
    trace = run(qwen64, "medusa:heads=random:2", prompt, 40, eos)
    assert trace.tokens == expected and trace.stop_reason == "eos"
