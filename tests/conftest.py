"""Shared fixtures: tiny random models built from a config inside the tests (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread is ~20x faster on 2 cores than two fighting ones
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

VOCAB = 96


#: the shape every tiny test model shares (EOS 2, pad 0)
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=2,
    pad_token_id=0,
    attn_implementation="sdpa",
)


def _ready(model, dtype: torch.dtype):
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float64, layers: int = 2, vocab: int = VOCAB):
    """A 2-layer random Llama, deterministic for a seed. EOS id 2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, bos_token_id=1, **TINY_DIMS)
    return _ready(LlamaForCausalLM(config), dtype)


def tiny_qwen2(seed: int = 0, dtype: torch.dtype = torch.float64):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, num_hidden_layers=2, **TINY_DIMS)
    return _ready(Qwen2ForCausalLM(config), dtype)


def prompts(n: int = 3, seed: int = 0, length: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length + 3 * i,), generator=g).tolist() for i in range(n)]


@pytest.fixture(scope="session")
def llama64():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def qwen64():
    return tiny_qwen2(seed=1)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (259 ids), built offline, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama + byte tokenizer: a model spec for the CLI (float32)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=7, dtype=torch.float32, vocab=len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class FakeTokenizer:
    """Character-level stand-in: ids are code points, chat turns rendered as <|role|>."""

    def __init__(self, chat: bool) -> None:
        self.chat_template = "fake" if chat else None

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
        return {"input_ids": [ord(c) for c in text]}


def decode(ids: list[int]) -> str:
    return "".join(map(chr, ids))
