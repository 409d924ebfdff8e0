"""EAGLE: head module + release layout, dynamic and static draft trees, lossless decoding with
random and trained heads, EOS / budgets inside a tree, static engine, trainer, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from cllm_bench.baselines.eagle import EAGLE1_TREE, EagleDecoder, FeatureDrafter, dynamic_tree
from cllm_bench.conformance import check_decoder
from cllm_bench.decoders.base import build_decoder
from cllm_bench.eagle_head import EagleHead, head_config, load_eagle_head
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.models import load_model, wrap_model
from cllm_bench.engines.static import StaticEngine
from cllm_bench.trainers import cli
from conftest import prompts, tiny_llama, tiny_qwen2
from test_baselines import NO_EOS, cyclic_model, eos_mid_output, run

SMALL = "depth=3,top_k=4,total_tokens=12"


def tpf(trace) -> float:
    """Output tokens per target forward (prefill included)."""
    return len(trace.tokens) / sum(1 for s in trace.steps if s.kind != "draft")


def write_release_head(folder, model, seed: int = 3, fmt: str = "bin", embed: bool = True, **overrides) -> EagleHead:
    """A head for ``model`` written the way the EAGLE authors release theirs: a Llama-style
    config.json (+ "bias") and pytorch_model.bin (or model.safetensors) with fc.*, layers.0.*
    and embed_tokens.weight. Returns the head (float64) whose weights were written."""
    cfg = model.config
    head = EagleHead.random(head_config(cfg), seed=seed)
    state = {k: v.clone() for k, v in head.state_dict().items() if "rotary" not in k}
    if embed:
        state["embed_tokens.weight"] = model.get_input_embeddings().weight.detach().float().clone() * 1.5
    config = {
        "architectures": [type(model).__name__], "model_type": cfg.model_type, "bias": True,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "num_hidden_layers": 1, "max_position_embeddings": 512, "rms_norm_eps": cfg.rms_norm_eps,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "torch_dtype": "float16", "transformers_version": "4.28.1", "use_cache": True,
        "vocab_size": model.get_output_embeddings().weight.shape[0],
    }  # fmt: skip
    config.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return head


# ------------------------------------------------------------------ random heads: lossless
@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("params", ["", SMALL, "tree=static", "tree=static,top_k=2,depth=2", "depth=0,top_k=3"])
def test_random_head_equals_ar(make, params):
    model = make()
    spec = "eagle:head=random" + ("," + params if params else "")
    for prompt in prompts(2, seed=5) + [[7]]:
        for max_new in (1, 2, 9, 30):
            expected = run(model, "ar", prompt, max_new).tokens
            trace = run(model, spec, prompt, max_new)
            assert trace.tokens == expected
            assert trace.steps[0].kind == "prefill"
            assert any(s.kind == "draft" for s in trace.steps) == (max_new > 2)  # the last token needs no draft


def test_dynamic_tree_shape_follows_eagle2(llama64):
    """depth expansions of top_k nodes, k + depth*k^2 candidates, reranked to the best ones."""
    model = llama64
    dec = EagleDecoder(head="random", seed=1)
    head = dec.eagle_head(model)
    drafter = FeatureDrafter(head, model.get_input_embeddings(), model.get_output_embeddings())
    engine = Engine(model)
    prompt = prompts(1)[0]
    with torch.inference_mode():
        _, hidden = engine.forward(engine.ids_tensor(prompt), output_hidden=True)
        drafter.add(hidden[0], prompt[1:] + [5])
        root = drafter.catch_up()
        cands, chosen, forwards = dynamic_tree(drafter, root, len(prompt), top_k=4, expansions=3, nodes=11)
    assert forwards == 3 and cands.widths == [4, 4, 4]
    assert len(cands.tokens) == 4 + 3 * 16 and len(chosen) == 11
    assert max(cands.depths) == 4
    chosen_set = set(chosen)
    assert all(cands.parents[c] < 0 or cands.parents[c] in chosen_set for c in chosen)  # prefix-closed
    worst_kept = min(cands.scores[c] for c in chosen)
    assert all(cands.scores[c] <= worst_kept for c in range(len(cands.tokens)) if c not in chosen_set)
    drafter.drop_tree()
    assert drafter.cache.get_seq_length() == len(prompt)


def test_static_tree_is_eagle1():
    assert len(EAGLE1_TREE) == 25 and max(len(p) for p in EAGLE1_TREE) == 5
    dec = EagleDecoder(head="random", tree="static")
    assert dec.static_paths(6) == list(EAGLE1_TREE)
    assert dec.static_paths(2) == [p for p in EAGLE1_TREE if len(p) <= 2]


def test_trace_records_draft_and_target_forwards(llama64):
    trace = run(llama64, f"eagle:head=random,{SMALL}", prompts(1)[0], 20)
    kinds = [s.kind for s in trace.steps]
    assert kinds[:2] == ["prefill", "draft"]
    rounds = kinds.count("target")
    # per round: catch-up + depth expansions (fewer near the end of the budget)
    assert kinds.count("draft") <= rounds * 4
    target = [s for s in trace.steps if s.kind == "target"]
    assert all(s.fed <= 12 and s.proposed == s.fed - 1 for s in target)


def test_conformance_battery_passes():
    for spec in (f"eagle:head=random,{SMALL}", "eagle:head=random,tree=static,top_k=3"):
        out = Console(record=True, width=160, file=open("/dev/null", "w"))
        assert check_decoder(spec, out), out.export_text()


def test_static_engine_equals_dynamic():
    model = tiny_llama(seed=11, dtype=torch.float32)
    static = StaticEngine(model, max_cache_len=400, pad_to_buckets=True)
    for tree in ("dynamic", "static"):
        dec = build_decoder(f"eagle:head=random,tree={tree},{SMALL}")
        dec.prepare(wrap_model(model))
        for prompt in prompts(2, seed=4):
            expected = dec.generate(Engine(model), prompt, 24, NO_EOS)
            got = dec.generate(static, prompt, 24, NO_EOS)
            assert got.tokens == expected.tokens
            assert [s.fed for s in got.steps] == [s.fed for s in expected.steps]


def perfect_head(model) -> EagleHead:
    """For :func:`cyclic_model`: the feature after (h_t, token_{t+1}) is exactly the target's
    h_{t+1} = sqrt(H)·onehot(token_{t+1}) — fc scales the (one-hot) embedding, the layer adds 0."""
    hidden = model.config.hidden_size
    head = EagleHead(head_config(model.config)).to(torch.float64).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.fc.weight[:, :hidden] = torch.eye(hidden, dtype=torch.float64) * hidden**0.5  # embedding half
        head.layers[0].post_attention_layernorm.weight.fill_(1.0)
    return head


@pytest.mark.parametrize("params, per_round", [("depth=3,top_k=4,total_tokens=12", 5), ("tree=static", 6),
                                               ("depth=0,top_k=2", 2), ("depth=6,top_k=1,total_tokens=8", 8)])  # fmt: skip
def test_perfect_head_accepts_the_whole_chain(params, per_round):
    """A head that predicts the target's features exactly: every round accepts the deepest
    path of the tree (depth + 1 nodes) plus the bonus — positions, masks and catch-up agree."""
    f = lambda t: 3 + (t * 5) % 11  # noqa: E731
    model = cyclic_model(next_token=f)
    dec = build_decoder("eagle:head=random," + params)
    dec.attach_head(perfect_head(model), model)  # what prepare() stores
    prompt = [5, 17, 40, 8]
    trace = run(model, "", prompt, 40, decoder=dec)
    assert trace.tokens == run(model, "ar", prompt, 40).tokens
    rounds = [s for s in trace.steps if s.kind == "target"]
    drafted = [s for s in rounds if s.fed > 1]  # a last round with one token wanted drafts nothing
    assert all(s.info["accepted_len"] == per_round for s in drafted) and len(rounds) - len(drafted) <= 1
    assert len(rounds) == -(-(40 - 1) // per_round)


def test_perfect_head_budget_and_eos_inside_a_tree():
    """Rounds accept 5 tokens: a budget of 8 or 9 and an EOS at index 2 end inside a round."""
    f = lambda t: 3 + (t * 5) % 11  # noqa: E731  (prompt ends with 8: output cycle 10 9 4 12 8 ...)
    model = cyclic_model(next_token=f)
    dec = build_decoder(f"eagle:head=random,{SMALL}")
    dec.attach_head(perfect_head(model), model)
    prompt = [5, 17, 40, 8]
    for max_new in (8, 9):
        trace = run(model, "", prompt, max_new, decoder=dec)
        assert trace.tokens == run(model, "ar", prompt, max_new).tokens and trace.stop_reason == "length"
        last = [s for s in trace.steps if s.kind == "target"][-1]
        assert (last.accepted, last.info["accepted_len"]) == (max_new - 6, 5)
    eos, expected = eos_mid_output(model, prompt, pos=2)
    trace = run(model, "", prompt, 40, eos, decoder=dec)
    assert trace.tokens == expected == [10, 9, 4] and trace.stop_reason == "eos"
    last = [s for s in trace.steps if s.kind == "target"][-1]
    assert (last.accepted, last.info["accepted_len"]) == (2, 5)


# ------------------------------------------------------------------ release layout
@pytest.mark.parametrize("fmt, embed", [("bin", True), ("safetensors", False)])
def test_release_layout_loads(tmp_path, llama64, fmt, embed):
    written = write_release_head(tmp_path / "head", llama64, fmt=fmt, embed=embed)
    head = load_eagle_head(tmp_path / "head", llama64)
    assert head.bias and head.layers[0].input_layernorm.__class__.__name__ == "Identity"
    assert (head.embed_tokens is not None) == embed
    mine = dict(head.named_parameters())
    for name, value in written.named_parameters():
        assert torch.equal(mine[name].float(), value.float()), name
    if embed:
        assert torch.allclose(head.embed_tokens.weight, llama64.get_input_embeddings().weight * 1.5)
    for prompt in prompts(2, seed=2):
        assert run(llama64, f"eagle:head={tmp_path / 'head'}", prompt, 20).tokens == run(llama64, "ar", prompt, 20).tokens


def test_own_embedding_changes_the_draft(tmp_path, llama64):
    """A released head's embed_tokens is what the head embeds with (not the target's)."""
    write_release_head(tmp_path / "a", llama64, embed=True)
    write_release_head(tmp_path / "b", llama64, embed=False, fmt="safetensors")
    prompt = prompts(1, seed=9)[0]
    a = run(llama64, f"eagle:head={tmp_path / 'a'},{SMALL}", prompt, 12)
    b = run(llama64, f"eagle:head={tmp_path / 'b'},{SMALL}", prompt, 12)
    assert a.tokens == b.tokens
    da, db = EagleDecoder(head=str(tmp_path / "a")), EagleDecoder(head=str(tmp_path / "b"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        ea = da.eagle_head(llama64).embed(llama64.get_input_embeddings(), ids)
        eb = db.eagle_head(llama64).embed(llama64.get_input_embeddings(), ids)
    assert torch.allclose(ea, 1.5 * eb)


# ------------------------------------------------------------------ bad input
def test_bad_input_names_the_fix(tmp_path, llama64):
    with pytest.raises(UserError, match="eagle:head=DIR"):
        build_decoder("eagle")
    with pytest.raises(UserError, match="no EAGLE head at"):
        build_decoder(f"eagle:head={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(UserError, match="no EAGLE head weights"):
        build_decoder(f"eagle:head={tmp_path / 'empty'}")
    with pytest.raises(UserError, match="tree must be one of"):
        build_decoder("eagle:head=random,tree=bushy")
    write_release_head(tmp_path / "wide", tiny_llama(), hidden_size=128, intermediate_size=128)
    write_release_head(tmp_path / "vocab", llama64, vocab_size=500)
    for name, what in (("wide", "hidden size 128"), ("vocab", "vocabulary 500")):
        dec = build_decoder(f"eagle:head={tmp_path / name}")  # the folder itself is fine
        with pytest.raises(UserError, match=f"{what}.*train eagle"):
            dec.validate_target(wrap_model(llama64))
        with pytest.raises(UserError, match=what):
            dec.prepare(wrap_model(llama64))
    write_release_head(tmp_path / "liar", llama64, intermediate_size=96)  # weights are 128 wide
    with pytest.raises(UserError, match="do not match its config.json"):
        build_decoder(f"eagle:head={tmp_path / 'liar'}").prepare(wrap_model(llama64))


def test_measure_script_parses():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "measure_eagle.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for needle in ("train eagle", "eagle:head=", "medusa:heads=", "speculative:draft=", "lookahead", "prompt_lookup"):
        assert needle in text


def test_cli_refuses_a_mismatched_head_before_any_cell(tiny_model_dir, tmp_path, capsys):
    from cllm_bench.cli import main

    write_release_head(tmp_path / "head", tiny_llama(), vocab_size=96)  # the CLI model has 259 tokens
    out = tmp_path / "run"
    args = ["run", "--models", str(tiny_model_dir), "--decoders", f"eagle:head={tmp_path / 'head'}",
            "--tasks", "humaneval", "--limit", "1", "--max-new-tokens", "4", "--output-path", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "vocabulary 96" in err and "Traceback" not in err
    samples = out / "samples.jsonl"
    assert not samples.exists() or samples.read_text() == ""  # not even the ar cell ran
    assert main(["run", "--models", str(tiny_model_dir), "--decoders", "eagle", "--output-path", str(tmp_path / "r2")]) == 2
    assert "eagle:head=DIR" in capsys.readouterr().err


def test_list_says_greedy_only(capsys):
    from cllm_bench.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "eagle" in text and "greedy only" in text


# ------------------------------------------------------------------ trained head
@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """`cllm-bench train eagle` on the tiny CLI model's own greedy answers to 48 prompts."""
    work = tmp_path_factory.mktemp("eagle-train")
    g = torch.Generator().manual_seed(3)
    rows = [{"prompt_ids": torch.randint(3, 259, (8 + i % 5,), generator=g).tolist()} for i in range(48)]
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / "head"
    args = cli.build_parser().parse_args(
        ["eagle", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "32", "--out", str(out),
         "--epochs", "40", "--batch-size", "8", "--lr", "3e-3", "--warmup-ratio", "0.05", "--save-every", "0"]
    )  # fmt: skip
    assert cli.run_train(args) == 0
    return out, [r["prompt_ids"] for r in rows]


def test_trainer_writes_release_layout_and_manifest(trained):
    out, _ = trained
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["bias"] is True and cfg["model_type"] == "llama"
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "eagle" and m["updates"] == 240 and m["train_seconds"] > 0
    assert m["loss_weights"] == {"feature_smooth_l1": 1.0, "token_ce": 0.1}
    terms = m["loss_terms"]
    assert {"vloss", "ploss", "top1"} <= set(terms) and len(terms["top1"]) == 240
    assert sum(terms["top1"][-6:]) > sum(terms["top1"][:6])  # the draft agrees more with the target
    assert sum(m["losses"][-6:]) < 0.7 * sum(m["losses"][:6])


def test_trainer_flags_noise_and_errors(trained, tiny_model_dir, tmp_path):
    parser = cli.build_parser()
    a = parser.parse_args(["eagle", "--model", "m", "--data", "d", "--out", "o"])
    assert (a.lr, a.batch_size, a.feature_noise, a.train_entry) == (3e-5, 4, 0.0, "eagle")
    data = trained[0].parent / "prompts.jsonl"
    out = tmp_path / "noisy"
    args = parser.parse_args(["eagle", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "8",
                              "--max-new-tokens", "8", "--out", str(out), "--max-steps", "2", "--feature-noise", "0.2"])  # fmt: skip
    assert cli.run_train(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["feature_noise"] == 0.2 and m["updates"] == 2
    bad = parser.parse_args(["eagle", "--model", "m", "--data", "d", "--out", "o", "--feature-noise", "-1"])
    with pytest.raises(UserError, match="feature-noise"):
        cli.run_train(bad)


@pytest.fixture(scope="module")
def trained_target(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float64", device="cpu").model


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_trained_head_accepts_and_stays_lossless(trained, trained_target, tree):
    out, rows = trained
    spec = f"eagle:head={out},tree={tree}"
    ratios = []
    for prompt in rows[:6]:
        expected = run(trained_target, "ar", prompt, 32).tokens
        trace = run(trained_target, spec, prompt, 32)
        assert trace.tokens == expected
        ratios.append(tpf(trace))
    assert sum(ratios) / len(ratios) > 1.3  # the head's drafts are accepted


def test_budget_and_eos_inside_a_tree(trained, trained_target):
    out, rows = trained
    spec = f"eagle:head={out},{SMALL}"
    inside_budget = inside_eos = 0
    for prompt in rows[:8]:
        for max_new in (3, 5, 8, 13):
            trace = run(trained_target, spec, prompt, max_new)
            assert trace.tokens == run(trained_target, "ar", prompt, max_new).tokens
            last = [s for s in trace.steps if s.kind == "target"][-1]
            inside_budget += last.accepted < last.info["accepted_len"]
        free = run(trained_target, spec, prompt, 32)
        pos, seen = 0, set()
        for step in free.steps:  # an EOS that ar emits first in the middle of a multi-token acceptance
            block = free.tokens[pos : pos + step.accepted]
            if step.kind == "target" and len(block) >= 3 and block[0] not in seen and pos >= 2:
                eos, expected = eos_mid_output(trained_target, prompt, pos, 32)
                got = run(trained_target, spec, prompt, 32, eos)
                assert got.tokens == expected and got.stop_reason == "eos"
                final = [s for s in got.steps if s.kind == "target"][-1]
                inside_eos += final.accepted < final.info["accepted_len"]
                break
            seen.update(block)
            pos += step.accepted
    assert inside_budget >= 3 and inside_eos >= 1


def test_spec_bench_reference_numbers_are_merged_into_the_report():
    from cllm_bench.report.document import paper_caveat
    from cllm_bench.report.facts import REFERENCE_JSON, load_references

    ref = load_references()
    eagle = {e["id"]: e["speedup"] for e in ref["entries"] if str(e["method"]).startswith("eagle")}
    # hemingkx/Spec-Bench Leaderboard.md @ fd2c1cd (results/reference/spec_bench_leaderboard.json), "Overall"
    assert eagle["spec-bench-leaderboard-a100-vicuna-7b-v1.3-eagle2"] == 2.36  # the "EAGLE-2 2.36x"
    assert eagle["spec-bench-leaderboard-3090-vicuna-7b-v1.3-eagle"] == 2.03
    board = json.loads((REFERENCE_JSON.parent / "spec_bench_leaderboard.json").read_text())["entries"]
    assert len(ref["entries"]) == len(json.loads(REFERENCE_JSON.read_text())["entries"]) + len(board)
    assert "RTX 3090" in paper_caveat(ref, [])


def test_our_eagle_stands_next_to_published_eagle_and_eagle2_rows():
    """The leaderboard table shows the published EAGLE-1 and EAGLE-2 rows next to our
    ``eagle`` (EAGLE-2's tree by default), in the published order, and keeps PLD's rows."""
    from cllm_bench.report.facts import load_references
    from cllm_bench.report.model import Cell
    from cllm_bench.report.speed import leaderboard_table

    ref = load_references()
    cells = [Cell("r", {"model": "m", "decoder": d, "task": "spec_bench", "by_category": {"overall": {"speedup": 1.0}},
                        "accepted_length_with_bonus": 2.0}) for d in ("eagle:head=h", "prompt_lookup")]  # fmt: skip
    table = leaderboard_table(cells, ref, multi=False)
    labels = [row[0] for row in table.rows]
    assert "eagle:head=h (ours)" in labels and "prompt_lookup (ours)" in labels
    published = [label for label in labels if label.endswith("(published)")]
    assert any(label.startswith("EAGLE-2") or label.startswith("EAGLE2") for label in published), published
    assert any(label.startswith("EAGLE ") or label == "EAGLE (published)" for label in published), published
    assert not any("EAGLE-3" in label or "EAGLE3" in label for label in published)
