"""Cost tables, per-forward traces and `cllm-bench predict` / `profile` (known answers, errors, end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cllm_bench.cli import main
from cllm_bench.cost_profile import ProfileSettings, binary_tree_mask, measure_grids, widths_for_run
from cllm_bench.cost_table import FORMAT, CostTable, Grid, HeadCost, ModelCosts, interpolate, load_cost_table
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.forward_trace import forward_trace, steps_with_context
from cllm_bench.predict import predict_run, sample_cost
from cllm_bench.trace import Trace

from conftest import prompts

IDENTITY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 96}


# ------------------------------------------------------------------ synthetic tables
def linear_grid(widths, contexts, a: float, b: float, c: float, tree: bool = False, batch: int = 1) -> Grid:
    """ms = a + b * width + c * context on the grid points."""
    ms = tuple(tuple(a + b * w + c * x for w in widths) for x in contexts)
    return Grid(batch=batch, tree=tree, widths=tuple(widths), contexts=tuple(contexts), ms=ms)


def synthetic_table(tree: bool = False, identity: dict | None = None, drafts: dict | None = None,
                    device_name: str = "test-device") -> CostTable:  # fmt: skip
    grids = [linear_grid((1, 4, 16), (8, 64), 10.0, 1.0, 0.0)]
    if tree:
        grids.append(linear_grid((2, 4, 16), (8, 64), 20.0, 1.0, 0.0, tree=True))
    target = ModelCosts("tiny", dict(identity or IDENTITY), step_overhead_ms=1.0, grids=tuple(grids))
    return CostTable("cpu", device_name, "float32", "dynamic", target, drafts or {}, repeats=3, path="synthetic.json")


def draft_costs() -> ModelCosts:
    return ModelCosts("self:layers=1", {}, step_overhead_ms=0.5, grids=(linear_grid((1, 16), (1, 64), 2.0, 0.0, 0.0),))


# ------------------------------------------------------------------ interpolation
def test_interpolate_inside_outside_and_single_point():
    assert interpolate(3, [1, 5], [10, 30]) == (20.0, False)
    assert interpolate(1, [1, 5], [10, 30]) == (10.0, False)
    assert interpolate(9, [1, 5], [10, 30]) == (50.0, True)  # end segment extended
    assert interpolate(0, [1, 5, 9], [10, 30, 30]) == (5.0, True)
    assert interpolate(7, [4], [2.5]) == (2.5, True)
    assert interpolate(9, [1, 5], [30, 10]) == (10.0, True)  # a falling last segment is not extended down
    assert interpolate(4, [4], [2.5]) == (2.5, False)


def test_grid_bilinear_exact_on_a_plane_and_flags_outside():
    grid = linear_grid((1, 2, 8, 32), (16, 128, 512), 3.0, 0.5, 0.01)
    ms, outside = grid.cost(5, 300)
    assert ms == pytest.approx(3.0 + 0.5 * 5 + 0.01 * 300) and not outside
    ms, outside = grid.cost(64, 300)  # wider than profiled
    assert ms == pytest.approx(3.0 + 0.5 * 64 + 0.01 * 300) and outside
    assert grid.cost(8, 1024)[1] and grid.cost(8, 4)[1]  # longer / shorter context than profiled


def test_cost_table_round_trip(tmp_path):
    table = synthetic_table(tree=True, drafts={"self:layers=1": draft_costs()})
    path = tmp_path / "t.json"
    table.write(path)
    back = load_cost_table(path)
    assert back.target.grids == table.target.grids and back.drafts["self:layers=1"].grids == draft_costs().grids
    assert json.loads(path.read_text())["format"] == FORMAT


# ------------------------------------------------------------------ known answers
def test_sample_cost_known_answer():
    table = synthetic_table()
    # prefill (free: TTFT), then target forwards of width 1, 4, 1 -> (11+1) + (14+1) + (11+1)
    trace = {"kinds": "pttt", "fed": [5, 1, 4, 1], "context": [0, 5, 6, 9], "tree": False}
    cost = sample_cost(trace, table.target, None)
    assert cost.ms == pytest.approx(39.0)
    assert cost.ideal_ms == pytest.approx(36.0)  # every forward a 1-token one
    assert cost.forwards == 3 and cost.extrapolated == 2  # contexts 5 and 6 < 8


def test_sample_cost_with_draft_and_tree():
    table = synthetic_table(tree=True)
    trace = {"kinds": "pddt", "fed": [10, 10, 1, 4], "context": [0, 0, 10, 10], "tree": True}
    cost = sample_cost(trace, table.target, draft_costs())
    # drafts: 2 x (2 + 0.5); target: tree grid 20 + 4 = 24, + 1 overhead
    assert cost.ms == pytest.approx(5.0 + 25.0)
    assert cost.tree_as_chain == 0
    no_tree = sample_cost(trace, synthetic_table(tree=False).target, draft_costs())
    assert no_tree.ms == pytest.approx(5.0 + 15.0) and no_tree.tree_as_chain == 1


def test_medusa_heads_cost_per_prefill_and_target_forward(tmp_path):
    trace = {"kinds": "ptt", "fed": [8, 4, 4], "context": [0, 8, 9], "tree": True, "generated": 3}
    run = write_run(tmp_path / "run", {"ar": [ar_trace(3)], "medusa:heads=random:2": [trace]})
    assert "heads random:2" in predict_run(run, synthetic_table(tree=True)).cells[1].note
    table = synthetic_table(tree=True)
    table = CostTable(table.device, table.device_name, table.dtype, table.engine, table.target,
                      heads={"random:2": HeadCost("random:2", 3.0)}, path="t.json")  # fmt: skip
    medusa = predict_run(run, table).cells[1]
    # 3 heads calls (after the prefill, after each forward) + 2 tree forwards of (20 + 4) + 1 overhead
    assert medusa.predicted_decode_s == [pytest.approx((3 * 3.0 + 2 * 25.0) / 1000)]
    assert medusa.note == ""


def write_run(folder: Path, cells: dict[str, list[dict]], device_name: str = "test-device",
              measured: dict[str, tuple[float, float]] | None = None) -> Path:  # fmt: skip
    """A minimal run folder: samples.jsonl with forward traces, summary.json with measured speed."""
    folder.mkdir(parents=True)
    lines, results = [], []
    for decoder, traces in cells.items():
        for i, tr in enumerate(traces):
            rec = {"model": "tiny", "decoder": decoder, "task": "humaneval", "sample_id": str(i),
                   "generated_tokens": tr.pop("generated"), "forward_trace": {**tr, "model": IDENTITY}}  # fmt: skip
            lines.append(json.dumps(rec))
        tps, speedup = (measured or {}).get(decoder, (None, None))
        results.append({"model": "tiny", "decoder": decoder, "task": "humaneval", "tokens_per_s": tps, "speedup": speedup})
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    summary = {"provenance": {"device_name": device_name}, "results": results}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def ar_trace(n: int, prompt: int = 8) -> dict:
    return {"kinds": "p" + "t" * (n - 1), "fed": [prompt] + [1] * (n - 1),
            "context": [0] + [prompt + i for i in range(n - 1)], "tree": False, "generated": n}  # fmt: skip


def test_predict_run_known_speedup_ideal_and_error(tmp_path):
    # ar: 8 tokens = prefill + 7 forwards of (11 + 1) ms -> 84 ms
    # jacobi: 8 tokens = prefill + 2 forwards of width 4 (15 ms) -> 30 ms; ideal 2 x 12 = 24 ms
    jac = {"kinds": "ptt", "fed": [8, 4, 4], "context": [0, 8, 12], "tree": False, "generated": 8}
    run = write_run(tmp_path / "run", {"ar": [ar_trace(8)], "jacobi:n=4": [jac]},
                    measured={"ar": (100.0, 1.0), "jacobi:n=4": (250.0, 2.5)})  # fmt: skip
    pred = predict_run(run, synthetic_table())
    ar, jc = pred.cells
    assert ar.predicted_decode_s == [pytest.approx(0.084)]
    assert ar.predicted_speedup == pytest.approx(1.0)
    assert jc.predicted_tokens_per_s == pytest.approx(8 / 0.030)
    assert jc.predicted_speedup == pytest.approx(84 / 30)
    assert jc.ideal_speedup == pytest.approx(84 / 24)
    assert pred.same_device and jc.speedup_error == pytest.approx((84 / 30 - 2.5) / 2.5)
    assert not pred.table_busy
    busy = synthetic_table()
    busy = CostTable(busy.device, busy.device_name, busy.dtype, busy.engine, busy.target,
                     provenance={"timing_health": {"ok": False, "problems": ["load"]}})  # fmt: skip
    assert predict_run(run, busy).table_busy
    other = predict_run(run, synthetic_table(device_name="elsewhere"))
    assert not other.same_device and other.cells[1].speedup_error is None


def test_predict_flags_extrapolation_and_unprofiled_draft(tmp_path):
    wide = {"kinds": "pt", "fed": [8, 64], "context": [0, 8], "tree": False, "generated": 8}
    spec = {"kinds": "pddt", "fed": [8, 8, 1, 2], "context": [0, 0, 8, 8], "tree": False, "generated": 2}
    run = write_run(tmp_path / "run", {"ar": [ar_trace(8)], "jacobi:n=64": [wide],
                                       "speculative:draft=self:layers=1,k=1": [spec]})  # fmt: skip
    cells = {c.decoder: c for c in predict_run(run, synthetic_table()).cells}
    assert cells["jacobi:n=64"].extrapolated_forwards == 1 and cells["jacobi:n=64"].extrapolated_share == 1.0
    assert cells["ar"].extrapolated_forwards == 0
    assert cells["speculative:draft=self:layers=1,k=1"].predicted_speedup is None
    assert "self:layers=1" in cells["speculative:draft=self:layers=1,k=1"].note
    with_draft = predict_run(run, synthetic_table(drafts={"self:layers=1": draft_costs()}))
    assert with_draft.cells[2].predicted_speedup is not None and with_draft.cells[2].note == ""


# ------------------------------------------------------------------ errors (CLI: one line, exit 2)
def test_predict_errors(tmp_path, capsys):
    run = write_run(tmp_path / "run", {"ar": [ar_trace(4)]})
    other = tmp_path / "other.json"
    synthetic_table(identity={**IDENTITY, "hidden_size": 576, "num_hidden_layers": 30}).write(other)
    assert main(["predict", str(run), "--cost-table", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "hidden_size 64 vs 576" in err and "num_hidden_layers" in err

    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"provenance": {}, "results": []}))
    (old / "samples.jsonl").write_text(json.dumps({"model": "tiny", "decoder": "ar", "task": "t"}) + "\n")
    good = tmp_path / "good.json"
    synthetic_table().write(good)
    assert main(["predict", str(old), "--cost-table", str(good)]) == 2
    assert "no per-forward trace" in capsys.readouterr().err

    broken = write_run(tmp_path / "broken", {"ar": [{"kinds": "pt", "fed": [4], "context": [0, 4], "generated": 2}]})
    assert main(["predict", str(broken), "--cost-table", str(good)]) == 2
    assert "malformed" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["predict", str(run), "--cost-table", str(bad)]) == 2
    assert "not a cost table" in capsys.readouterr().err
    assert main(["profile", "--models", "a,b"]) == 2
    assert "one model per cost table" in capsys.readouterr().err
    assert main(["profile", "--models", "a", "--widths", "1,x"]) == 2
    assert "--widths" in capsys.readouterr().err


def test_widths_for_run_splits_chain_tree_and_draft_widths(tmp_path):
    chain = {"kinds": "pttt", "fed": [8, 1, 3, 11], "context": [0, 8, 9, 12], "tree": False, "generated": 5}
    tree = {"kinds": "pttt", "fed": [8, 28, 1, 56], "context": [0, 8, 10, 11], "tree": True, "generated": 5}
    spec = {"kinds": "pdtddt", "fed": [8, 8, 5, 2, 1, 3], "context": [0, 0, 8, 9, 11, 12], "tree": False, "generated": 5}
    run = write_run(tmp_path / "run", {"jacobi": [chain], "lookahead": [tree], "speculative": [spec]})
    used = widths_for_run(run)
    # 1 is always a chain width; a tree decoder's 1-token forward is priced as a chain (no mask to apply)
    assert used.chain == (1, 3, 5, 11) and used.tree == (28, 56) and used.draft == (1, 2, 8)
    settings = ProfileSettings(widths=used.chain, tree_widths=used.tree, draft_widths=used.draft)
    settings.check()
    assert settings.chain_widths(draft=False) == (1, 3, 5, 11) and settings.chain_widths(draft=True) == (1, 2, 8)
    assert settings.tree_grid_widths() == (28, 56) and settings.capacity >= 512 + 56


class CountingEngine:
    """A stand-in engine (no model): notes every forward's (width, tree, cache length)."""

    def __init__(self) -> None:
        self.length = 0
        self.seen: list[tuple[int, bool, int]] = []

    def prefill(self, ids):
        self.length = len(ids)

    def ids_tensor(self, ids):
        return torch.tensor([ids])

    def forward(self, ids, tree_mask=None):
        self.seen.append((ids.shape[1], tree_mask is not None, self.length))
        self.length += ids.shape[1]

    def rollback(self, length):
        self.length = length


def test_measure_grids_interleaves_chain_and_tree_points_per_repeat():
    settings = ProfileSettings(widths=(1, 3), contexts=(5, 9), repeats=4, calls=2, warmup=1)
    engine = CountingEngine()
    grids = measure_grids(engine, 96, 1, [(False, (1, 3)), (True, (2, 6))], settings, torch.device("cpu"))
    assert [(g.tree, g.widths, g.contexts) for g in grids] == [(False, (1, 3), (5, 9)), (True, (2, 6), (5, 9))]
    assert all(len(row) == 2 and all(v >= 0 for v in row) for g in grids for row in g.ms)
    points = {(1, False), (3, False), (2, True), (6, True)}
    per_context = len(points) * (settings.warmup + settings.repeats * settings.calls)
    assert len(engine.seen) == 2 * per_context
    for ci, context in enumerate((5, 9)):
        seen = engine.seen[ci * per_context:(ci + 1) * per_context]
        assert all(length == context for _, _, length in seen)  # every forward runs on the rolled-back context
        timed = seen[len(points) * settings.warmup:]
        repeats = [timed[r * 8:(r + 1) * 8] for r in range(settings.repeats)]
        orders = []
        for rep in repeats:  # each repeat: every point once, its calls back to back
            order = [(w, t) for w, t, _ in rep[::settings.calls]]
            assert set(order) == points and rep[1::settings.calls] == rep[::settings.calls]
            orders.append(order)
        assert len({tuple(o) for o in orders}) > 1  # shuffled, not grid after grid


def test_profile_width_errors(tmp_path, capsys):
    run = write_run(tmp_path / "run", {"ar": [ar_trace(4)]})
    assert main(["profile", "--models", "a", "--widths", "1,2", "--widths-from", str(run)]) == 2
    assert "--widths or --widths-from" in capsys.readouterr().err
    assert main(["profile", "--models", "a", "--widths", "2,4"]) == 2
    assert "must include 1" in capsys.readouterr().err
    assert main(["profile", "--models", "a", "--widths-from", str(tmp_path / "missing")]) == 2
    assert "--widths-from takes a folder" in capsys.readouterr().err


# ------------------------------------------------------------------ derived contexts match the engine
class RecordingEngine(Engine):
    """An :class:`Engine` that notes (width, cache length) before every decode forward."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.seen: list[tuple[int, int]] = []

    def forward(self, ids, *args, **kwargs):
        self.seen.append((ids.shape[1], self.length))
        return super().forward(ids, *args, **kwargs)


@pytest.mark.parametrize("spec", ["ar", "jacobi:n=4", "prompt_lookup", "lookahead:w=3,n=3,g=2", "medusa:heads=random:2",
                                  "speculative:draft=self:layers=1,k=2"])  # fmt: skip
def test_derived_context_equals_engine_length(llama64, spec):
    decoder = build_decoder(spec)
    engine = RecordingEngine(llama64)
    prompt = prompts(1, seed=3)[0]
    with torch.inference_mode():
        trace = decoder.generate(engine, prompt, 20, frozenset())
    rows = steps_with_context(trace)
    target = [(fed, ctx) for kind, fed, ctx in rows if kind == "t"]
    seen = engine.seen[1:] if engine.seen[:1] == [(len(prompt), 0)] else engine.seen  # Medusa prefills via forward()
    assert target == seen  # the target's own forwards (draft engines are separate)
    assert rows[0] == ("p", len(prompt), 0)
    record = forward_trace([trace, trace], decoder, llama64)
    assert len(record["kinds"]) == len(record["fed"]) == len(record["context"]) == 2 * len(trace.steps)
    assert record["model"]["hidden_size"] == 64 and record["tree"] == spec.startswith(("lookahead", "medusa"))


def test_derived_draft_context_hand_made():
    trace = Trace(prompt_len=10)
    trace.record("prefill", fed=10, accepted=1)
    trace.record("draft", fed=10, accepted=0, prefill=True)  # the draft's prompt pass
    trace.record("draft", fed=1, accepted=0)
    trace.record("draft", fed=1, accepted=0)
    trace.record("target", fed=3, accepted=2)  # context 10 (prompt, x pending)
    trace.record("draft", fed=2, accepted=0)  # draft saw 10; feeds the 2 new accepted tokens
    trace.record("draft", fed=1, accepted=0)
    assert [c for _, _, c in steps_with_context(trace)] == [0, 0, 10, 11, 10, 11, 13]


def test_binary_tree_mask_shape():
    mask = binary_tree_mask(5)
    assert mask.tolist()[4] == [True, True, False, False, True]  # 4 -> 1 -> 0
    assert mask.diagonal().all() and not mask.triu(1).any()


# ------------------------------------------------------------------ end to end: run, profile, predict, report
def test_run_profile_predict_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    decoders = "ar,jacobi:n=4,speculative:draft=self:layers=1,k=2,medusa:heads=random:2"
    assert main(["run", "--models", str(tiny_model_dir), "--decoders", decoders, "--tasks", "humaneval", "--limit", "2",
                 "--max-new-tokens", "8", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
                 "--output-path", str(out)]) == 0  # fmt: skip
    for line in (out / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ft = rec["forward_trace"]
        assert ft["kinds"][0] == "p" and len(ft["kinds"]) == len(ft["fed"]) == len(ft["context"])
        assert ft["kinds"].count("p") + ft["kinds"].count("t") == rec["forwards"]
        assert ft["kinds"].count("d") == rec["draft_forwards"]
    table_path = tmp_path / "table.json"
    assert main(["profile", "--models", str(tiny_model_dir), "--draft", "self:layers=1", "--heads", "random:2", "--widths", "1,4",
                 "--contexts-from", str(out), "--batch-sizes", "1,2", "--repeats", "1", "--calls", "1",
                 "--warmup", "1", "--overhead-tokens", "3", "--device", "cpu", "--dtype", "float32",
                 "--output", str(table_path)]) == 0  # fmt: skip
    table = json.loads(table_path.read_text())
    assert table["format"] == FORMAT and table["device"] == "cpu" and table["dtype"] == "float32"
    assert table["target"]["identity"]["hidden_size"] == 64 and table["target"]["identity"]["num_hidden_layers"] == 2
    kinds = {(g["batch"], g["tree"]) for g in table["target"]["grids"]}
    assert kinds == {(1, False), (1, True), (2, False)}
    for g in table["target"]["grids"]:
        assert len(g["ms"]) == len(g["contexts"]) == 3 and all(len(r) == len(g["widths"]) for r in g["ms"])
    assert [g["widths"] for g in table["target"]["grids"] if g["tree"]] == [[4]]
    assert set(table["drafts"]) == {"self:layers=1"} and set(table["heads"]) == {"random:2"}
    assert "packages" in table["provenance"] and table["repeats"] == 1 and "ok" in table["provenance"]["timing_health"]
    pred_path = tmp_path / "pred.json"
    capsys.readouterr()
    assert main(["predict", str(out), "--cost-table", str(table_path), "--output", str(pred_path)]) == 0
    pred = json.loads(pred_path.read_text())
    assert [c["decoder"] for c in pred["cells"]] == ["ar", "jacobi:n=4", "speculative:draft=self:layers=1,k=2",
                                                     "medusa:heads=random:2"]  # fmt: skip
    assert pred["same_device"] is True
    for cell in pred["cells"]:
        assert cell["note"] == "" and len(cell["predicted_decode_s"]) == 2
        assert cell["predicted_speedup"] is not None and cell["ideal_speedup"] is not None
        assert cell["speedup_error"] is not None
    assert pred["cells"][0]["predicted_speedup"] == 1.0
    report = tmp_path / "report"
    assert main(["report", str(out), "--cost-table", str(table_path), "--output", str(report), "--format", "md,html"]) == 0
    assert "Predicted speed" in (report / "report.md").read_text() and "ideal speedup" in (report / "report.html").read_text()


# ------------------------------------------------------------------ the committed derived H100 table
def test_committed_h100_table_is_what_the_script_derives(tmp_path):
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    committed = repo / "results" / "cost_tables" / "h100-smollm2-bf16-static-compile-derived.json"
    spec = importlib.util.spec_from_file_location("derive_h100", repo / "scripts" / "derive_h100_cost_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.derive().write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(committed.read_text())
    table = load_cost_table(committed)
    assert table.target.identity["hidden_size"] == 576 and table.target.identity["num_hidden_layers"] == 30
    assert table.provenance["measured"] is False and "README" in table.provenance["derived"]
    assert table.target.step_overhead_ms == pytest.approx(0.98)
    chain, _ = table.target.grid(1, False)
    assert chain.cost(16, 14) == (pytest.approx(1.95), False)
    assert chain.cost(16, 200) == (pytest.approx(1.95), True)  # one context point: held constant, flagged
