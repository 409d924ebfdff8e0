"""Batch > 1: the batched engine (left padding, per-row lengths, holes, compaction) and every
decoder's batched path reproduce the single-prompt path token for token (float64, CPU)."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from cllm_bench.engines.batch import BatchEngine, pad_batch
from cllm_bench.cli import main
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.engines.static_batch import StaticBatchEngine
from cllm_bench.trace import check_trace

from conftest import prompts, tiny_llama

BATCHED = [
    "ar",
    "jacobi:n=1",
    "jacobi:n=4",
    "jacobi:n=16",
    "jacobi:n=5,init=repeat",
    "cllm:n=7",
    "speculative:draft=self:layers=1,k=3",
    "speculative:draft=self,k=4",
    "hf",
]
NO_EOS = frozenset({10_000})


def ragged_prompts(n: int = 4) -> list[list[int]]:
    """Prompts of different lengths (12, 15, 18, ... tokens): left padding differs per row."""
    return prompts(n, seed=3)


def eos_stopping_some_rows(model, ps: list[list[int]], max_new: int) -> frozenset[int]:
    """An EOS id that ``ar`` emits early in row 1, so rows finish at different steps."""
    engine = Engine(model)
    free = build_decoder("ar").generate(engine, ps[1], max_new, NO_EOS).tokens
    return frozenset({free[5]})


@pytest.mark.parametrize("spec", BATCHED)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batched_decoder_equals_single(spec, family, llama64, qwen64):
    model = llama64 if family == "llama" else qwen64
    ps = ragged_prompts()
    eos = eos_stopping_some_rows(model, ps, 30)
    decoder = build_decoder(spec)
    single = [decoder.generate(Engine(model), p, 30, eos) for p in ps]
    batch = decoder.generate_batch(BatchEngine(model), ps, 30, eos)
    ar = [build_decoder("ar").generate(Engine(model), p, 30, eos) for p in ps]
    assert [t.tokens for t in batch] == [t.tokens for t in ar]
    assert len({len(t.tokens) for t in batch}) > 1, "rows should stop at different lengths"
    for s, b in zip(single, batch):
        check_trace(b, 30, eos)
        if spec != "hf":  # hf's trace is synthesised from its output; ours record every forward
            assert b.steps == s.steps and b.blocks == s.blocks


def test_batched_speculative_with_separate_draft(llama64):
    """A draft with its own weights (and its own batched cache) — per-row acceptance varies."""
    ps = ragged_prompts(5)
    draft = copy.deepcopy(llama64)
    with torch.no_grad():  # a noisy copy: agrees with the target often, not always
        g = torch.Generator().manual_seed(0)
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 * p.std())
    decoder = build_decoder("speculative:k=4")
    decoder.attach_draft(draft, llama64)
    batch = decoder.generate_batch(BatchEngine(llama64), ps, 25, NO_EOS)
    ar = [build_decoder("ar").generate(Engine(llama64), p, 25, NO_EOS) for p in ps]
    assert [t.tokens for t in batch] == [t.tokens for t in ar]
    accepted = [s.info["draft_accepted"] for t in batch for s in t.steps if s.kind == "target"]
    assert len(set(accepted)) > 1, "the separate draft should be accepted to different depths"


def test_batch_of_one_and_identical_rows(llama64):
    ps = ragged_prompts(1)
    for spec in ("ar", "jacobi:n=8"):
        one = build_decoder(spec).generate_batch(BatchEngine(llama64), ps, 12, NO_EOS)
        assert one[0].tokens == build_decoder("ar").generate(Engine(llama64), ps[0], 12, NO_EOS).tokens
        same = build_decoder(spec).generate_batch(BatchEngine(llama64), ps * 3, 12, NO_EOS)
        assert [t.tokens for t in same] == [one[0].tokens] * 3


def test_prefill_logits_match_unpadded(llama64):
    ps = ragged_prompts()
    batch_logits = BatchEngine(llama64).prefill(ps)
    for row, p in enumerate(ps):
        torch.testing.assert_close(batch_logits[row], Engine(llama64).prefill(p), rtol=0, atol=1e-12)


def make_batch_engine(kind: str, model, **kwargs) -> BatchEngine:
    if kind == "dynamic":
        return BatchEngine(model, **kwargs)
    return StaticBatchEngine(model, max_cache_len=160, pad_to_buckets=kind == "static-padded", **kwargs)


@pytest.mark.parametrize("kind", ["dynamic", "static", "static-padded"])
@pytest.mark.parametrize("slack", [0, 1_000])
def test_truncate_many_cycles_keeps_rows_consistent(llama64, slack, kind):
    """Random per-row accept/reject cycles (holes, cropping, compaction when slack = 0):
    the next logits of every row equal a fresh single-prompt prefill of its accepted text."""
    rng = random.Random(0)
    ps = ragged_prompts()
    engine = make_batch_engine(kind, llama64, compact_slack=slack)
    engine.prefill(ps)
    texts = [list(p) for p in ps]
    compacted_to = []
    for _ in range(25):
        feeds = [[rng.randrange(3, 96) for _ in range(rng.randrange(0, 6))] for _ in ps]
        ids, _ = pad_batch(feeds, 0)
        engine.forward(ids, [len(f) for f in feeds])
        keep = [len(t) + rng.randrange(0, len(f) + 1) for t, f in zip(texts, feeds)]
        for row, (t, f) in enumerate(zip(texts, feeds)):
            texts[row] = t + f[: keep[row] - len(t)]
        engine.truncate(keep)
        compacted_to.append(engine.width)
        assert engine.lengths.tolist() == [len(t) for t in texts]
        assert engine.valid.sum(dim=1).tolist() == [len(t) for t in texts]
    probe = torch.tensor([[7]] * len(ps))
    logits = engine.forward(probe)[:, -1]
    for row, t in enumerate(texts):
        ref = Engine(llama64)
        ref.prefill(t)
        torch.testing.assert_close(logits[row], ref.forward(torch.tensor([[7]]))[0, -1], rtol=0, atol=1e-10)
    longest = max(len(t) for t in texts)
    if slack == 0:
        assert max(compacted_to) <= 1.5 * longest + 6, "compaction should bound the cache width"


@pytest.mark.parametrize("kind", ["static", "static-padded"])
@pytest.mark.parametrize("spec", ["ar", "jacobi:n=4", "jacobi:n=16", "cllm:n=7", "speculative:draft=self:layers=1,k=3"])
def test_static_batch_engine_matches_eager(spec, kind):
    """The preallocated batched cache (in-place writes, length-update rollback, bucket
    padding) gives the eager engine's tokens; one engine reused across two batches."""
    model = tiny_llama(seed=11, dtype=torch.float32)
    engine = make_batch_engine(kind, model)
    for ps in (ragged_prompts(4), prompts(2, seed=8)):
        expected = [t.tokens for t in build_decoder(spec).generate_batch(BatchEngine(model), ps, 26, NO_EOS)]
        got = build_decoder(spec).generate_batch(engine, ps, 26, NO_EOS)
        assert [t.tokens for t in got] == expected


def test_static_batch_engine_compiled_on_cpu():
    """torch.compile (inductor on CPU) of the batched decode forward: same tokens as eager."""
    model = tiny_llama(seed=11, dtype=torch.float32)
    ps = ragged_prompts(3)
    engine = StaticBatchEngine(model, max_cache_len=128, compile=True, buckets=(1, 4, 16))
    for spec in ("ar", "jacobi:n=4"):
        expected = [build_decoder("ar").generate(Engine(model), p, 20, NO_EOS).tokens for p in ps]
        assert [t.tokens for t in build_decoder(spec).generate_batch(engine, ps, 20, NO_EOS)] == expected


def test_truncate_refuses_to_grow(llama64):
    engine = BatchEngine(llama64)
    engine.prefill(ragged_prompts(2))
    with pytest.raises(ValueError, match="cannot grow"):
        engine.truncate([100, 1])


@pytest.mark.parametrize("spec", ["lookahead", "medusa:heads=self", "cllm:lookahead=true", "speculative:temperature=0.7"])
def test_unbatched_decoders_say_so(llama64, spec):
    try:
        decoder = build_decoder(spec)
    except UserError:  # medusa needs heads; any clear error is fine here
        pytest.skip("decoder not buildable without extra files")
    with pytest.raises(UserError, match="batch"):
        decoder.generate_batch(BatchEngine(llama64), ragged_prompts(2), 5, NO_EOS)


def test_bench_batch_size(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main([
        "bench", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--repeats", "1", "--warmup", "0",
        "--batch-size", "3", "--decoders", "jacobi:n=4;speculative:draft=self:layers=1,k=2", "--output-path", str(out),
    ])  # fmt: skip
    assert rc == 0
    doc = json.loads(next(out.glob("bench-*.json")).read_text())
    assert doc["provenance"]["batch_size"] == 3 and doc["provenance"]["engine"] == "dynamic"
    rows = {r["decoder"]: r for r in doc["results"]}
    assert set(rows) == {"hf eager", "ar (dynamic)", "jacobi:n=4 (dynamic)", "speculative:draft=self:layers=1,k=2 (dynamic)"}
    for r in rows.values():
        assert r["generated_tokens"] == 18 and r["batch_size"] == 3 and r["tokens_per_s"] > 0
        assert r["match_hf_eager"] is True  # float32 tiny model: the batched paths agree with HF's batching
    assert rows["hf eager"]["ratio_vs_hf_eager"] == pytest.approx(1.0)
    assert "batch 3" in capsys.readouterr().out


def test_bench_batch_size_on_the_static_engine(tiny_model_dir, tmp_path):
    rc = main(["bench", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--repeats", "1", "--warmup", "0",
               "--batch-size", "2", "--engine", "static", "--decoders", "jacobi:n=4", "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 0
    doc = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    rows = {r["decoder"]: r for r in doc["results"]}
    assert set(rows) == {"hf eager", "ar (static)", "jacobi:n=4 (static)"}
    assert all(r["match_hf_eager"] and r["generated_tokens"] == 12 for r in rows.values())


@pytest.mark.parametrize("spec", ["lookahead", "cllm:lookahead=true", "speculative:temperature=0.5"])
def test_bench_batch_size_refuses_unbatched_decoder(tiny_model_dir, tmp_path, capsys, spec):
    rc = main(["bench", "--model", str(tiny_model_dir), "--batch-size", "2", "--decoders", spec,
               "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert spec in err and "batched decoders" in err and "Traceback" not in err
    assert not list(tmp_path.glob("bench-*.json"))


def test_bench_batch_one_still_works(tiny_model_dir, tmp_path):
    """The batch-1 bench (the one in results/bench/) on a tiny model: keys the README documents."""
    rc = main(["bench", "--model", str(tiny_model_dir), "--max-new-tokens", "5", "--repeats", "2", "--warmup", "1",
               "--decoders", "jacobi:n=4", "--output-path", str(tmp_path)])  # fmt: skip
    assert rc == 0
    doc = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    for r in doc["results"]:
        for key in ("tokens_per_s", "ms_per_forward", "ratio_vs_hf_eager", "ratio_vs_hf_compiled", "bandwidth_share"):
            assert key in r
        assert r["ratio_vs_hf_compiled"] is None  # HF compiled runs on CUDA only by default
        assert r["repeats"] == 2 and r["generated_tokens"] == 10
