"""scripts/profile_speculative.py: its split counts what the trace says (tiny model, no timing)."""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import sys
from pathlib import Path

import torch

from cllm_bench.decoders.base import build_decoder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_speculative.py"


def load_script():
    spec = importlib.util.spec_from_file_location("profile_speculative", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_split_counts_match_the_trace():
    prof = load_script()
    model = prof.tiny_model(layers=3)
    decoder = build_decoder("speculative:draft=self:layers=1,k=3")
    engine = prof.ProfiledTargetEngine(model)
    profiler = cProfile.Profile()
    with torch.inference_mode():
        profiler.enable()
        traces = [decoder.generate(engine, p, 20, frozenset()) for p in prof.tiny_prompts(2)]
        profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = prof.entry(stats, prof.find(stats, "generate", "baselines/speculative.py")).cum_s
    parts = dict(prof.split(stats, total))
    steps = [s for t in traces for s in t.steps]
    target_steps = sum(s.kind == "target" for s in steps)
    assert parts["target prefill"].calls == 2 and parts["draft prefill"].calls == 2
    assert parts["target verify (k+1 forward)"].calls == target_steps
    assert parts["draft steps (one-token forwards)"].calls == sum(s.kind == "draft" for s in steps) - 2
    assert parts["rollback: target cache"].calls == target_steps
    assert 0 < parts["rollback: draft cache"].calls <= target_steps
    assert abs(sum(e.cum_s for e in parts.values()) - total) < 1e-6 + 0.05 * total
