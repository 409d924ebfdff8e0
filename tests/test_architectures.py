"""Every decoder-only architecture: blocks found generically, self-draft and Medusa equal ar.

Tiny random GPT-NeoX (blocks at ``gpt_neox.layers``), GPT-2 (``transformer.h``) and OPT
(``model.decoder.layers``, with a head narrower than the hidden size) built here, float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cllm_bench.baselines.medusa import prefill_with_hidden
from cllm_bench.baselines.speculative import truncated_model
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.model_layout import decoder_blocks, head_input_size
from conftest import VOCAB, prompts, tiny_llama
from test_baselines import run

LAYERS = 3


def tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=2, bos_token_id=1)  # fmt: skip
    return GPTNeoXForCausalLM(config)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_head=4, n_layer=LAYERS, n_positions=512, eos_token_id=2,
                        bos_token_id=1)  # fmt: skip
    return GPT2LMHeadModel(config)


def tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_attention_heads=4, num_hidden_layers=LAYERS,
                       max_position_embeddings=512, word_embed_proj_dim=32, eos_token_id=2, bos_token_id=1,
                       pad_token_id=0)  # fmt: skip
    return OPTForCausalLM(config)


BUILDERS = {"gpt_neox": (tiny_neox, ("gpt_neox", "layers")), "gpt2": (tiny_gpt2, ("transformer", "h")),
            "opt": (tiny_opt, ("model", "decoder", "layers"))}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def arch(request):
    """(name, float64 model in eval mode, expected block path)."""
    build, path = BUILDERS[request.param]
    torch.manual_seed(3)
    return request.param, build().to(torch.float64).eval(), path


def test_decoder_blocks_found_where_the_architecture_keeps_them(arch):
    _, model, path = arch
    found = decoder_blocks(model)
    assert found.path == path
    assert len(found.blocks) == LAYERS
    llama = tiny_llama(layers=2)
    assert decoder_blocks(llama).path == ("model", "layers")


def test_no_block_list_is_a_user_error():
    with pytest.raises(UserError, match="no list of decoder blocks"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_truncated_view_shares_weights_and_leaves_the_target_alone(arch):
    _, model, path = arch
    draft = truncated_model(model, 1)
    blocks = decoder_blocks(model).blocks
    assert len(blocks) == LAYERS and model.config.num_hidden_layers == LAYERS
    assert len(decoder_blocks(draft).blocks) == 1 and draft.config.num_hidden_layers == 1
    assert decoder_blocks(draft).blocks[0] is blocks[0]
    assert draft.get_output_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    prompt = prompts(1, seed=4)[0]
    with torch.inference_mode():  # the view really runs one layer: its logits differ from the target's
        assert not torch.allclose(Engine(draft).prefill(prompt), Engine(model).prefill(prompt))


@pytest.mark.parametrize("spec", ["speculative:draft=self:layers=1,k=3", "speculative:draft=self:layers=2,k=2"])
def test_layer_truncated_self_draft_equals_ar(arch, spec):
    _, model, _ = arch
    for prompt in prompts(2, seed=11):
        for max_new in (1, 17):
            assert run(model, spec, prompt, max_new).tokens == run(model, "ar", prompt, max_new).tokens


def test_hidden_state_is_the_head_input(arch):
    """Medusa reads the vector the LM head reads: head(hidden) reproduces the logits."""
    _, model, _ = arch
    prompt = prompts(1, seed=5)[0]
    logits, hidden = prefill_with_hidden(Engine(model), prompt)
    assert hidden.shape[-1] == head_input_size(model)
    with torch.inference_mode():
        assert torch.allclose(model.get_output_embeddings()(hidden), logits)


@pytest.mark.parametrize("spec", ["medusa:heads=random:3,tree=chain", "medusa:tree=full,topk=2,seed=1"])
def test_medusa_equals_ar(arch, spec):
    _, model, _ = arch
    for prompt in prompts(2, seed=12):
        for max_new in (1, 17):
            assert run(model, spec, prompt, max_new).tokens == run(model, "ar", prompt, max_new).tokens


def test_opt_head_width_differs_from_hidden_size():
    model = tiny_opt()
    assert head_input_size(model) == 32 != model.config.hidden_size
