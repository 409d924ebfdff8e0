"""HF assisted generation / HF prompt lookup as ``hf`` variants, and the ours-vs-HF pairing.

Tiny random float32 models: a 2-layer target and a 1-layer draft of another seed sharing
its vocabulary (a poor but legal assistant). Forward counts are checked against counters
on decoder *layers* (independent of the decoder's own hooks on the model modules).
"""

from __future__ import annotations

import pytest
import torch

from cllm_bench import metrics
from cllm_bench.baselines.hf_generate import HFGenerateDecoder
from cllm_bench.engines.batch import BatchEngine
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.models import wrap_model
from cllm_bench.peers import method_of, pair_labels, peer_rows
from cllm_bench.trace import check_trace
from conftest import VOCAB, prompts, tiny_llama

NO_EOS = frozenset({10_000})
F32 = torch.float32


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, dtype=F32)


@pytest.fixture(scope="module")
def draft():
    return tiny_llama(seed=7, layers=1, dtype=F32)


def run(model, decoder, prompt: list[int], max_new: int, eos=NO_EOS):
    dec = build_decoder(decoder) if isinstance(decoder, str) else decoder
    trace = dec.generate(Engine(model), prompt, max_new, eos)
    check_trace(trace, max_new, eos)
    return trace


def with_assistant(spec: str, draft, target) -> HFGenerateDecoder:
    dec = build_decoder(spec)
    dec.attach_assistant(draft, target)
    return dec


class LayerCounter:
    """Counts the calls of one decoder layer and the positions they carried."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.calls = 0
        self.positions = 0
        self.handle = layer.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.calls += 1
        self.positions += int(hidden.shape[1])


def target_steps(trace):
    return [s for s in trace.steps if s.kind in ("prefill", "target")]


def draft_steps(trace):
    return [s for s in trace.steps if s.kind == "draft"]


# ------------------------------------------------------------------ lossless (float32)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_assisted_generation_equals_ar(target, draft, k):
    spec = "hf:assistant=self" + (f",k={k}" if k else "")
    dec = with_assistant(spec, draft, target)
    for prompt in prompts(3, seed=21):
        for max_new in (1, 9, 40):
            trace = run(target, dec, prompt, max_new)
            assert trace.tokens == run(target, "ar", prompt, max_new).tokens, (spec, max_new)
            assert len(trace.tokens) == max_new and trace.stop_reason == "length"


def test_self_layers_assistant_equals_ar(target):
    for prompt in prompts(2, seed=8):
        trace = run(target, "hf:assistant=self:layers=1,k=3", prompt, 25)
        assert trace.tokens == run(target, "ar", prompt, 25).tokens
        assert draft_steps(trace)  # the assistant ran


@pytest.mark.parametrize("spec", ["hf:prompt_lookup=4", "hf:prompt_lookup=10,ngram=3", "hf:prompt_lookup=1"])
def test_prompt_lookup_equals_ar_and_copies(target, spec):
    copied = 0
    for prompt in prompts(3, seed=4):
        prompt = prompt + prompt  # a repeated prompt: lookups find continuations
        for max_new in (1, 9, 40):
            trace = run(target, spec, prompt, max_new)
            assert trace.tokens == run(target, "ar", prompt, max_new).tokens, (spec, max_new)
            copied += sum(s.accepted > 1 for s in target_steps(trace))
    assert copied > 0  # the variant really proposed and got tokens accepted


@pytest.mark.parametrize("spec", ["hf:assistant=self,k=3", "hf:prompt_lookup=4"])
def test_stops_at_eos_like_ar(target, draft, spec):
    prompt = prompts(1, seed=5)[0]
    free = run(target, "ar", prompt, 40).tokens
    eos = frozenset({free[11]})
    ar = run(target, "ar", prompt, 40, eos)
    assert ar.stop_reason == "eos"
    dec = with_assistant(spec, draft, target) if "assistant" in spec else spec
    trace = run(target, dec, prompt + prompt, 40, eos) if "lookup" in spec else run(target, dec, prompt, 40, eos)
    expected = ar.tokens if "assistant" in spec else run(target, "ar", prompt + prompt, 40, eos).tokens
    assert trace.tokens == expected and trace.stop_reason == "eos"


# --------------------------------------------------------------------- forward counts
def test_assistant_forwards_counted_apart(target, draft):
    """Trace counts == layer counters: target forwards (+ widths) and assistant forwards."""
    dec = with_assistant("hf:assistant=self,k=3", draft, target)
    prompt = prompts(1, seed=2)[0]
    t_layer, d_layer = LayerCounter(target.model.layers[0]), LayerCounter(draft.model.layers[0])
    try:
        trace = run(target, dec, prompt, 30)
    finally:
        t_layer.handle.remove(), d_layer.handle.remove()
    assert len(target_steps(trace)) == t_layer.calls
    assert sum(s.fed for s in target_steps(trace)) == t_layer.positions
    assert len(draft_steps(trace)) == d_layer.calls > 0
    assert sum(s.fed for s in draft_steps(trace)) == d_layer.positions
    assert metrics.tokens_per_forward(trace) == 30 / t_layer.calls
    # constant schedule, no confidence stop: 3 drafts per round while the budget allows
    rounds = target_steps(trace)
    assert all(s.proposed == min(3, 30 - 1 - sum(r.accepted for r in rounds[:i])) for i, s in enumerate(rounds))


def test_self_layers_view_shares_hooks_but_counts_stay_apart(target):
    """self:layers=1 shares layer 0 (and the hook table) with the target: layer 1 runs only in
    target forwards, layer 0 in both — the trace must split them exactly so."""
    prompt = prompts(1, seed=3)[0]
    layer0, layer1 = LayerCounter(target.model.layers[0]), LayerCounter(target.model.layers[1])
    try:
        trace = run(target, "hf:assistant=self:layers=1,k=2", prompt, 20)
    finally:
        layer0.handle.remove(), layer1.handle.remove()
    assert len(target_steps(trace)) == layer1.calls
    assert len(draft_steps(trace)) == layer0.calls - layer1.calls > 0
    assert sum(s.fed for s in draft_steps(trace)) == layer0.positions - layer1.positions


def test_full_self_assistant_accepts_k_plus_one(target):
    """The target as its own assistant: every round keeps all k drafts + the bonus token."""
    k = 4
    trace = run(target, f"hf:assistant=self,k={k}", prompts(1, seed=6)[0], 40)
    rounds = target_steps(trace)
    assert [s.accepted for s in rounds] == [k + 1] * 8  # 40 tokens = 8 forwards x 5
    assert len(draft_steps(trace)) == k * 8  # k per round (the last one: min(k, remaining - 1) = k)
    assert metrics.tokens_per_forward(trace) == 5.0


def test_prompt_lookup_counts_target_forwards_only(target):
    prompt = prompts(1, seed=4)[0] * 2
    layer = LayerCounter(target.model.layers[0])
    try:
        trace = run(target, "hf:prompt_lookup=4", prompt, 30)
    finally:
        layer.handle.remove()
    assert not draft_steps(trace)
    assert len(target_steps(trace)) == layer.calls
    assert sum(s.fed for s in target_steps(trace)) == layer.positions
    assert all(s.fed == 1 + s.proposed for s in trace.steps[1:])


def test_schedule_state_does_not_leak_between_calls(target):
    """A heuristic-schedule assistant: every call starts from the loaded schedule, and neither
    the draft's nor the target's generation_config is written."""
    source = tiny_llama(seed=7, layers=1, dtype=F32)
    source.generation_config.num_assistant_tokens = 2
    source.generation_config.num_assistant_tokens_schedule = "heuristic"
    dec = with_assistant("hf:assistant=self", source, target)
    prompt = prompts(1, seed=9)[0]
    first = run(target, dec, prompt, 25)
    second = run(target, dec, prompt, 25)
    assert [(s.kind, s.fed, s.accepted) for s in first.steps] == [(s.kind, s.fed, s.accepted) for s in second.steps]
    assert source.generation_config.num_assistant_tokens == 2
    assert getattr(target.generation_config, "num_assistant_tokens", None) is None
    run(target, "hf:assistant=self,k=3", prompt, 10)
    assert getattr(target.generation_config, "num_assistant_tokens", None) is None


# ----------------------------------------------------------------------- bad input
def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t2")


def test_assistant_with_another_vocabulary_is_refused_before_running(tmp_path, target):
    loaded = wrap_model(target, _tokenizer(VOCAB))
    other = tmp_path / "other-vocab"
    tiny_llama(seed=5, layers=1, vocab=80).save_pretrained(other)
    _tokenizer(80).save_pretrained(other)
    with pytest.raises(UserError, match="vocabulary"):
        build_decoder(f"hf:assistant={other}").validate_target(loaded)
    renamed = tmp_path / "other-tokenizer"  # same size, other tokens
    tiny_llama(seed=5, layers=1).save_pretrained(renamed)
    tok = _tokenizer(VOCAB)
    tok.add_tokens(["zz"])  # one more entry: a different tokenizer
    tok.save_pretrained(renamed)
    with pytest.raises(UserError, match="different tokenizer"):
        build_decoder(f"hf:assistant={renamed}").validate_target(loaded)
    with pytest.raises(UserError, match="vocabulary"):
        build_decoder("hf:assistant=self").attach_assistant(tiny_llama(seed=1, layers=1, vocab=80), target)
    good = tmp_path / "good"
    tiny_llama(seed=5, layers=1).save_pretrained(good)
    _tokenizer(VOCAB).save_pretrained(good)
    dec = build_decoder(f"hf:assistant={good},k=2")
    dec.validate_target(loaded)
    prompt = prompts(1, seed=1)[0]
    assert run(target, dec, prompt, 12).tokens == run(target, "ar", prompt, 12).tokens


@pytest.mark.parametrize("spec, match", [
    ("hf:assistant=/nonexistent/draft-model", "not found|neither|check the path"),
    ("hf:assistant=self:heads=2", "self:layers=K"),
    ("hf:k=3", "assistant"),
    ("hf:ngram=3", "prompt_lookup"),
    ("hf:assistant=self,prompt_lookup=4", "one of them"),
    ("hf:prompt_lookup=4,cache=static", "dynamic cache"),
    ("hf:assistant=self,compile=true", "dynamic cache"),
    ("hf:prompt_lookup=-1", ">= 0"),
])  # fmt: skip
def test_bad_parameters_fail_when_built(spec, match):
    with pytest.raises(UserError, match=match):
        build_decoder(spec)


def test_variants_have_no_batched_path(target):
    assert build_decoder("hf").supports_batch is True
    for spec in ("hf:prompt_lookup=3", "hf:assistant=self,k=2"):
        dec = build_decoder(spec)
        assert dec.supports_batch is False and dec.lossless is True
        with pytest.raises(UserError, match="batch size 1"):
            dec.generate_batch(BatchEngine(target), prompts(2), 5, NO_EOS)


# --------------------------------------------------------------- ours vs HF pairing
def test_labels_map_to_methods():
    assert method_of("speculative").draft == "self:layers=4" and method_of("speculative").k == 5
    assert method_of("hf:assistant=self:layers=6,k=4") == method_of("hf:assistant=self:layers=6,k=4")
    hf = method_of("hf:assistant=self:layers=6,k=4")
    assert (hf.family, hf.hf, hf.draft, hf.k) == ("speculative", True, "self:layers=6", 4)
    assert method_of("hf:prompt_lookup=10").ngram == 2
    assert method_of("hf") is None and method_of("ar") is None and method_of("speculative:temperature=0.5") is None


def test_pairs_prefer_the_same_setting():
    labels = ["ar", "hf", "speculative:draft=self:layers=6,k=4", "hf:assistant=self:layers=6",
              "hf:assistant=self:layers=6,k=4", "hf:assistant=self:layers=2,k=4", "prompt_lookup",
              "hf:prompt_lookup=10,ngram=3", "speculative:draft=self:layers=3"]  # fmt: skip
    assert pair_labels(labels) == [
        ("speculative:draft=self:layers=6,k=4", "hf:assistant=self:layers=6,k=4", "same"),
        ("prompt_lookup", "hf:prompt_lookup=10,ngram=3", "same"),
    ]
    notes = dict((o, n) for o, _, n in pair_labels(["speculative", "hf:assistant=self:layers=4", "prompt_lookup:k=5",
                                                    "hf:prompt_lookup=7"]))  # fmt: skip
    assert notes == {"speculative": "k 5 vs HF default schedule", "prompt_lookup:k=5": "k 5 vs 7; ngram 3 vs 2"}


def test_peer_rows_ratio_and_bracket():
    records = [
        {"decoder": "speculative:draft=self:layers=6,k=4", "tokens_per_s": 30.0, "tokens_per_s_min": 27.0,
         "tokens_per_s_max": 33.0, "tokens_per_forward": 3.0, "match_ar": 1.0},
        {"decoder": "hf:assistant=self:layers=6,k=4", "tokens_per_s": 20.0, "tokens_per_s_min": 18.0,
         "tokens_per_s_max": 22.0, "tokens_per_forward": 3.0, "match_ar": 1.0},
        {"decoder": "ar", "tokens_per_s": 10.0},
    ]  # fmt: skip
    (row,) = peer_rows(records, lambda r: r["decoder"], "match_ar")
    assert row.ratio == pytest.approx(1.5)
    assert row.ratio_lo == pytest.approx(27 / 22) and row.ratio_hi == pytest.approx(33 / 18)
    assert peer_rows(records[1:], lambda r: r["decoder"], "match_ar") == []


# ------------------------------------------------------------- end to end: run, report, bench
PEERS = ("speculative:draft=self:layers=1,k=2;hf:assistant=self:layers=1,k=2;prompt_lookup:k=4,ngram=2;"
         "hf:prompt_lookup=4")  # fmt: skip


def test_run_and_report_show_ours_vs_hf(tiny_model_dir, tmp_path):
    import json

    from cllm_bench.cli import main
    from cllm_bench.report.document import build_document
    from cllm_bench.report.markdown import render_markdown
    from cllm_bench.report.model import load_run

    out = tmp_path / "run"
    assert main(["run", "--models", str(tiny_model_dir), "--decoders", "ar;" + PEERS, "--tasks", "humaneval",
                 "--limit", "2", "--max-new-tokens", "12", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
                 "--output-path", str(out)]) == 0  # fmt: skip
    results = {r["decoder"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    for label in ("hf:assistant=self:layers=1,k=2", "hf:prompt_lookup=4"):
        assert results[label]["match_ar"] == 1.0 and results[label]["tokens_per_forward"] >= 1.0
    assert results["hf:assistant=self:layers=1,k=2"]["draft_forwards"] > 0
    doc = build_document([load_run(out)], [], None)
    (section,) = [s for s in doc.sections if s.anchor == "peers"]
    rows = [row for block in section.blocks if hasattr(block, "rows") for row in block.rows]
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("prompt_lookup:ngram=2,k=4", "hf:prompt_lookup=4", "same"),
        ("speculative:draft=self:layers=1,k=2", "hf:assistant=self:layers=1,k=2", "same"),
    ]
    assert "## Ours vs HF" in render_markdown(doc)


def test_bench_prints_ours_vs_hf(tiny_model_dir, tmp_path, capsys):
    import json

    from cllm_bench.cli import main

    rc = main(["bench", "--model", str(tiny_model_dir), "--max-new-tokens", "8", "--repeats", "1", "--warmup", "0",
               "--decoders", PEERS, "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ours vs HF" in printed
    rows = {r["method"]: r for r in json.loads(next(tmp_path.glob("bench-*.json")).read_text())["results"]}
    assert rows["hf:assistant=self:layers=1,k=2"]["match_hf_eager"] is True
    assert rows["hf:prompt_lookup=4"]["match_hf_eager"] is True


def test_run_refuses_a_foreign_assistant_before_any_cell(tiny_model_dir, tmp_path, capsys):
    from cllm_bench.cli import main

    other = tmp_path / "other-vocab"
    tiny_llama(seed=5, layers=1, vocab=80, dtype=F32).save_pretrained(other)
    _tokenizer(80).save_pretrained(other)
    out = tmp_path / "run"
    rc = main(["run", "--models", str(tiny_model_dir), "--decoders", f"ar;hf:assistant={other}", "--tasks",
               "humaneval", "--limit", "1", "--max-new-tokens", "4", "--device", "cpu", "--output-path", str(out)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "vocabulary" in err and "Traceback" not in err
    samples = out / "samples.jsonl"
    assert not samples.exists() or samples.read_text().strip() == ""  # not even ar's cell ran


def test_run_peers_script_pairs_every_method_like_for_like():
    """scripts/run_peers.sh: every decoder builds and both pairs have the same setting."""
    import re
    from pathlib import Path

    from cllm_bench.cli import split_decoder_list

    text = (Path(__file__).resolve().parents[1] / "scripts" / "run_peers.sh").read_text()
    (specs,) = re.findall(r'--decoders "([^"]+)"', text)
    labels = [build_decoder(s).label for s in split_decoder_list(specs)]
    assert "--repeats 3" in text and "self:layers=6" in specs
    assert sorted(pair_labels(labels)) == [
        ("prompt_lookup:ngram=2", "hf:prompt_lookup=10", "same"),  # k=10 is the default
        ("speculative:draft=self:layers=6,k=4", "hf:assistant=self:layers=6,k=4", "same"),
    ]
