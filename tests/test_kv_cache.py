"""The transformers cache wrapper: truncate / keep_positions on the installed release."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.engines import kv_cache
from cllm_bench.engines import Engine
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


def test_cache_keyword_read_off_the_forward_signature(llama64):
    import inspect

    params = inspect.signature(llama64.forward).parameters
    expected = "cache" if "cache" in params else "past_key_values"
    assert kv_cache.cache_keyword(llama64) == expected

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return input_ids

    class KwargsOnly(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return input_ids

    assert kv_cache.cache_keyword(OldStyle()) == "past_key_values"
    assert kv_cache.cache_keyword(KwargsOnly()) == "past_key_values"


@pytest.mark.parametrize("kind", ["dynamic", "static", "batch", "static_batch"])
def test_engine_forwards_raise_no_deprecation_warning(llama64, kind):
    """Every engine passes the cache under the name the installed transformers expects:
    no FutureWarning/DeprecationWarning from a prefill, a block and a tree forward."""
    import warnings

    from cllm_bench.engines.batch import BatchEngine
    from cllm_bench.engines.static_batch import StaticBatchEngine
    from cllm_bench.engines.static import StaticEngine

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind in ("batch", "static_batch"):
            engine = BatchEngine(llama64) if kind == "batch" else StaticBatchEngine(llama64, max_cache_len=64)
            engine.prefill(prompts(2))
            engine.forward(torch.tensor([[5, 6], [7, 8]]))
        else:
            engine = Engine(llama64) if kind == "dynamic" else StaticEngine(llama64, max_cache_len=64)
            engine.prefill(prompts(1)[0])
            engine.forward(engine.ids_tensor([5, 6, 7]))
            engine.forward(engine.ids_tensor([5, 6]), tree_mask=torch.eye(2, dtype=torch.bool), output_hidden=True)
    bad = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not bad, [str(w.message) for w in bad]
