"""Speculative decoding: lossless with any draft, self-drafts, vocabulary check, sampling rule."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.baselines.speculative import SpeculativeDecoder, truncated_model
from cllm_bench.decoders.verify import sample_accept
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.models import wrap_model
from conftest import VOCAB, prompts, tiny_llama
from test_baselines import eos_mid_output, run


@pytest.fixture(scope="module")
def draft64():
    """A different random model sharing the vocabulary (a poor but legal draft)."""
    return tiny_llama(seed=7, layers=1)


def with_draft(spec: str, draft, target) -> SpeculativeDecoder:
    dec = build_decoder(spec)
    dec.attach_draft(draft, target)
    return dec


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_random_draft_equals_ar(request, model_fixture, k, draft64):
    model = request.getfixturevalue(model_fixture)
    dec = with_draft(f"speculative:k={k}", draft64, model)
    for prompt in prompts(3, seed=21):
        for max_new in (1, 9, 40):
            trace = run(model, None, prompt, max_new, decoder=dec)
            assert trace.tokens == run(model, "ar", prompt, max_new).tokens
            drafts = [s for s in trace.steps if s.kind == "draft"]
            assert all(s.accepted == 0 for s in drafts)


def test_self_draft_accepts_everything(llama64):
    k = 4
    for prompt in prompts(2, seed=3):
        trace = run(llama64, f"speculative:draft=self,k={k}", prompt, 23)
        assert trace.tokens == run(llama64, "ar", prompt, 23).tokens
        target = [s for s in trace.steps if s.kind == "target"]
        assert all(s.info["draft_accepted"] == s.proposed for s in target)
        assert [s.accepted for s in target[:-1]] == [k + 1] * (len(target) - 1)
        assert 1 + (k + 1) * (len(target) - 1) + target[-1].accepted == 23 and target[-1].accepted <= k + 1
        assert sum(1 for s in trace.steps if s.kind == "draft") == 1 + sum(s.proposed for s in target)


def test_self_layers_draft_shares_weights_and_equals_ar():
    target = tiny_llama(seed=2, layers=3)
    draft = truncated_model(target, 1)
    assert len(target.model.layers) == 3 and target.config.num_hidden_layers == 3
    assert len(draft.model.layers) == 1 and draft.config.num_hidden_layers == 1
    assert draft.model.layers[0] is target.model.layers[0]
    assert draft.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    assert draft.model.norm is target.model.norm
    # the view computes what a real 1-layer model with the same weights computes
    real = tiny_llama(seed=99, layers=1)
    real.load_state_dict({k: v for k, v in target.state_dict().items() if "layers.1" not in k and "layers.2" not in k})
    ids = torch.tensor([prompts(1)[0]])
    with torch.no_grad():
        assert torch.equal(draft(input_ids=ids).logits, real(input_ids=ids).logits)
    # separate caches: the target still decodes as before
    for prompt in prompts(2, seed=8):
        for spec in ("speculative:draft=self:layers=1,k=3", "speculative:draft=self:layers=2,k=2"):
            assert run(target, spec, prompt, 25).tokens == run(target, "ar", prompt, 25).tokens
    assert truncated_model(target, 3) is target and truncated_model(target, 9) is target


def test_self_layers_on_qwen2(qwen64):
    for prompt in prompts(2, seed=6):
        assert run(qwen64, "speculative:draft=self:layers=1", prompt, 21).tokens == run(qwen64, "ar", prompt, 21).tokens


def test_eos_mid_output_with_a_random_draft(llama64, draft64):
    prompt = prompts(1, seed=5)[0]
    eos, expected = eos_mid_output(llama64, prompt)
    trace = run(llama64, None, prompt, 40, eos, decoder=with_draft("speculative:k=3", draft64, llama64))
    assert trace.tokens == expected and trace.stop_reason == "eos"


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t2")


def test_draft_loaded_from_a_folder_and_vocabulary_check(tmp_path, llama64):
    target = wrap_model(llama64, _tokenizer(VOCAB))
    good = tmp_path / "draft"
    tiny_llama(seed=5, layers=1).save_pretrained(good)
    _tokenizer(VOCAB).save_pretrained(good)
    dec = build_decoder(f"speculative:draft={good},k=3")
    dec.prepare(target)
    prompt = prompts(1, seed=1)[0]
    assert run(llama64, None, prompt, 17, decoder=dec).tokens == run(llama64, "ar", prompt, 17).tokens

    other = tmp_path / "other-vocab"
    tiny_llama(seed=5, layers=1, vocab=80).save_pretrained(other)
    _tokenizer(80).save_pretrained(other)
    with pytest.raises(UserError, match="vocabulary"):
        build_decoder(f"speculative:draft={other}").prepare(target)
    with pytest.raises(UserError, match="vocabulary"):
        SpeculativeDecoder(draft="self").attach_draft(tiny_llama(seed=1, layers=1, vocab=80), llama64)
    with pytest.raises(UserError):
        build_decoder("speculative:draft=self:heads=2")


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def test_sample_accept_reproduces_the_target_distribution():
    """One draft position: the first output token must be distributed as p, whatever q is."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)
    logits = torch.log(torch.stack([p, p]))
    counts = torch.zeros(5, dtype=torch.float64)
    trials = 6000
    for _ in range(trials):
        d = int(torch.multinomial(q, 1, generator=gen))
        first = sample_accept([d], [q], logits, temperature=1.0, generator=gen)[0]
        counts[first] += 1
    assert _chi_square(counts, p) < 18.47  # chi2(df=4) at p = 0.001


def test_speculative_sampling_matches_target_sampling():
    """End to end on a tiny sharp vocabulary: the 2nd and 3rd tokens follow the target's law."""
    vocab = 6
    target = tiny_llama(seed=11, layers=1, vocab=vocab)
    draft = tiny_llama(seed=12, layers=1, vocab=vocab)
    with torch.no_grad():  # sharpen both so p and q differ visibly
        target.lm_head.weight.mul_(40)
        draft.lm_head.weight.mul_(40)
    prompt = [3, 4, 5, 1]
    # exact law of (t0, t1, t2) by enumeration
    with torch.no_grad():
        p0 = torch.softmax(target(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
        pairs = torch.tensor([[a, b] for a in range(vocab) for b in range(vocab)])
        ids = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
        logits = target(input_ids=ids).logits
    p1 = torch.softmax(logits[:, -2], -1)  # [36, V]: row (a, b) holds p(t1 | t0 = a)
    p2 = torch.softmax(logits[:, -1], -1)  # p(t2 | t0 = a, t1 = b)
    law1 = torch.zeros(vocab, dtype=torch.float64)
    law2 = torch.zeros(vocab, dtype=torch.float64)
    for i, (a, b) in enumerate(pairs.tolist()):
        pab = p0[a] * p1[i, b]
        law1[b] += pab
        law2 += pab * p2[i]
    dec = SpeculativeDecoder(draft="self", k=2, temperature=1.0)
    assert dec.lossless is False and SpeculativeDecoder(draft="self").lossless is True
    dec.attach_draft(draft, target)
    counts1 = torch.zeros(vocab, dtype=torch.float64)
    counts2 = torch.zeros(vocab, dtype=torch.float64)
    for seed in range(500):
        dec.seed = seed
        trace = dec.generate(Engine(target), prompt, 3, frozenset({99}))
        counts1[trace.tokens[1]] += 1
        counts2[trace.tokens[2]] += 1
    assert _chi_square(counts1, law1) < 20.5  # chi2(df=5) at p = 0.001
    assert _chi_square(counts2, law2) < 20.5


def test_static_engine_gets_a_static_draft_engine(llama64):
    from cllm_bench.engines.static import StaticEngine

    prompt = prompts(1, seed=4)[0]
    dec = build_decoder("speculative:draft=self:layers=1,k=3")
    engine = StaticEngine(llama64, max_cache_len=len(prompt) + 30 + 64, pad_to_buckets=True)
    first = dec.generate(engine, prompt, 30, frozenset({10_000}))
    assert isinstance(dec.draft_engine(engine), StaticEngine)
    again = dec.generate(engine, prompt, 30, frozenset({10_000}))  # draft engine reused, reset by its prefill
    assert first.tokens == again.tokens == run(llama64, "ar", prompt, 30).tokens
