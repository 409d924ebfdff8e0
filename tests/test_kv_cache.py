"""The transformers cache wrapper: truncate / keep_positions on the installed release."""

from __future__ import annotations

import pytest
import torch

from cllm_bench import kv_cache
from cllm_bench.engine import Engine
from conftest import prompts


def test_truncate_and_keep_positions(llama64):
    engine = Engine(llama64)
    engine.prefill(prompts(1)[0])  # 12 positions
    assert engine.length == 12
    engine.forward(engine.ids_tensor([5, 6, 7, 8]))
    keys_before = engine.cache.layers[0].keys.clone()
    assert engine.length == 16
    engine.rollback(14)
    assert engine.length == 14
    assert torch.equal(engine.cache.layers[0].keys, keys_before[..., :14, :])
    engine.rollback(14)  # no-op
    assert engine.length == 14
    with pytest.raises(ValueError):
        kv_cache.truncate(engine.cache, 20)
    engine.forward(engine.ids_tensor([5, 6, 7, 8]))  # positions 14..17
    keys = engine.cache.layers[1].keys.clone()
    engine.keep(14, [1, 3])
    assert engine.length == 16
    assert torch.equal(engine.cache.layers[1].keys[..., 14, :], keys[..., 15, :])
    assert torch.equal(engine.cache.layers[1].keys[..., 15, :], keys[..., 17, :])


def test_rollback_then_refeed_reproduces_logits(llama64):
    """Many accept/reject cycles leave the cache exactly as a clean prefix run would."""
    prompt = prompts(1, seed=2)[0]
    text = [11, 12, 13, 14, 15, 16, 17, 18]
    engine = Engine(llama64)
    engine.prefill(prompt)
    committed = 0
    for cycle in range(4):
        engine.forward(engine.ids_tensor(text[committed : committed + 3] + [40 + cycle]))  # one junk token
        committed += 2
        engine.rollback(len(prompt) + committed)
    ref = Engine(llama64)
    ref.prefill(prompt + text[:committed])
    a = engine.forward(engine.ids_tensor([20]))
    b = ref.forward(ref.ids_tensor([20]))
    assert torch.allclose(a, b, atol=1e-10)


def test_tree_mask_isolates_branches(llama64):
    """Two branches in one forward with a block-diagonal mask == two separate forwards."""
    prompt = prompts(1, seed=3)[0]
    engine = Engine(llama64)
    engine.prefill(prompt)
    p = len(prompt)
    ids = engine.ids_tensor([21, 22, 31, 32])
    positions = torch.tensor([[p, p + 1, p, p + 1]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    tree = engine.forward(ids, positions, mask)
    for branch, sl in (([21, 22], slice(0, 2)), ([31, 32], slice(2, 4))):
        ref = Engine(llama64)
        ref.prefill(prompt)
        assert torch.allclose(tree[:, sl], ref.forward(ref.ids_tensor(branch)), atol=1e-10)
