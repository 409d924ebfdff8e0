"""spec_bench: questions, category selection, Spec-Bench grouping, bad files, two-turn runs,
per-category summaries and the Spec-Bench answer export round trip (tiny model, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cllm_bench.categories import MT_BENCH_CATEGORIES, OVERALL, SPEC_BENCH_GROUPS, group_order, spec_bench_group
from cllm_bench.cli import main
from cllm_bench.errors import DataError, UserError
from cllm_bench.export_spec_bench import read_answers, spec_bench_speed
from cllm_bench.tasks.base import TaskOptions
from cllm_bench.tasks.spec_bench import SpecBench
from conftest import SHARED_DATA, FakeTokenizer

REAL = SHARED_DATA / "spec_bench" / "question.jsonl"


def write_questions(root: Path, lines: list[str]) -> Path:
    folder = root / "spec_bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "question.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_questions(root: Path) -> Path:
    """One question per Spec-Bench group, two MT-bench ones (two turns), short texts."""
    rows = [
        (1, "writing", ["Write hi.", "Now shorter."]),
        (2, "coding", ["Code a loop.", "In C."]),
        (3, "translation", ["Translate: ja"]),
        (4, "summarization", ["Summarize: a b c"]),
        (5, "qa", ["Who? A."]),
        (6, "math_reasoning", ["1+1?"]),
        (7, "rag", ["Doc: x. Q: x?"]),
    ]
    return write_questions(root, [json.dumps({"question_id": q, "category": c, "turns": t}) for q, c, t in rows])


def task(data_dir: Path | None, **extra: str) -> SpecBench:
    return SpecBench(TaskOptions(data_dir=data_dir, extra=dict(extra)))


# ---------------------------------------------------------------- grouping
def test_grouping_matches_spec_bench_speed_py():
    # speed.py: mt_bench_list = the 8 MT-bench categories; subtasks in get_single_speedup's order
    assert set(MT_BENCH_CATEGORIES) == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                        "humanities"}  # fmt: skip
    assert all(spec_bench_group(c) == "mt_bench" for c in MT_BENCH_CATEGORIES)
    assert [spec_bench_group(c) for c in ("translation", "summarization", "qa", "math_reasoning", "rag")] == list(
        SPEC_BENCH_GROUPS[1:]
    )
    assert group_order(["rag", "mt_bench", "qa", "custom"]) == ["mt_bench", "qa", "rag", "custom", OVERALL]


@pytest.mark.skipif(not REAL.is_file(), reason="shared Spec-Bench data not present")
def test_real_question_file_has_480_questions_in_six_groups():
    samples = task(SHARED_DATA).samples()
    assert len(samples) == 480
    groups = {}
    for s in samples:
        groups[spec_bench_group(s.data["category"])] = groups.get(spec_bench_group(s.data["category"]), 0) + 1
    assert groups == {g: 80 for g in SPEC_BENCH_GROUPS}
    assert all(len(s.data["turns"]) == 2 for s in samples if spec_bench_group(s.data["category"]) == "mt_bench")
    per = task(SHARED_DATA, per_category="5").samples()
    assert len(per) == 30
    mt = [s.data["category"] for s in per if spec_bench_group(s.data["category"]) == "mt_bench"]
    assert len(set(mt)) == 5  # the MT-bench categories take turns, not the first five writing questions


def test_category_selection_and_limit(tmp_path):
    root = tiny_questions(tmp_path)
    assert [s.data["question_id"] for s in task(root, categories="mt_bench,qa").samples()] == [1, 2, 5]
    assert [s.data["question_id"] for s in task(root, per_category="1").samples()] == [1, 3, 4, 5, 6, 7]
    assert [s.data["question_id"] for s in task(root, per_category="1").samples(limit=2)] == [1, 3]
    with pytest.raises(UserError, match="unknown category 'poetry'"):
        task(root, categories="poetry").samples()
    with pytest.raises(UserError, match="per_category must be a positive integer"):
        task(root, per_category="0").samples()
    with pytest.raises(UserError, match="unknown --task-args"):
        task(root, per_categroy="2").samples()


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question_id": 9, "turns": ["hi"]}', "lacks field\\(s\\) category"),
        ('{"question_id": 9, "category": "qa"}', "lacks field\\(s\\) turns"),
        ('{"question_id": 9, "category": "qa", "turns": []}', "turns must be a non-empty list"),
        ('{"question_id": 9, "category": 3, "turns": ["x"]}', "category must be a non-empty string"),
    ],
)
def test_bad_question_file_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"question_id": 1, "category": "qa", "turns": ["q"]})
    root = write_questions(tmp_path, [good, "", line])
    with pytest.raises(DataError, match=f"question.jsonl:3: .*{message}"):
        task(root).samples()


def test_two_turn_prompt_follows_the_first_answer_and_accuracy_is_not_applicable(tmp_path):
    t = task(tiny_questions(tmp_path))
    sample = t.samples()[0]
    assert t.n_turns(sample) == 2
    tok = FakeTokenizer(chat=True)
    second = "".join(map(chr, t.prompt_ids(sample, tok, ["ANSWER ONE"])))
    assert "Write hi." in second and "ANSWER ONE" in second and second.endswith("Now shorter.\n<|assistant|>")
    score = t.score(sample, ["a", "b"])
    assert score["category"] == "writing" and score["turns_answered"] == 2
    agg = t.aggregate([score])
    assert agg["accuracy"] is None and "not applicable" in agg["note"]


# ---------------------------------------------------------------- a real run + export
@pytest.fixture(scope="module")
def spec_run(tiny_model_dir, tmp_path_factory):
    root = tiny_questions(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs") / "spec"
    args = [
        "run", "--models", str(tiny_model_dir), "--decoders", "ar,prompt_lookup:k=3,jacobi:n=4", "--tasks",
        "spec_bench", "--data-dir", str(root), "--limit", "0", "--max-new-tokens", "8", "--warmup", "0",
        "--repeats", "2", "--device", "cpu", "--dtype", "float32", "--output-path", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    return out


def test_run_scores_both_turns_and_keeps_categories(spec_run):
    samples = [json.loads(line) for line in (spec_run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 7
    two_turn = [s for s in samples if s["sample_id"] in ("spec_bench/1", "spec_bench/2")]
    for s in two_turn:
        assert len(s["completions"]) == 2 and len(s["turn_lengths"]) == 2
        assert s["score"]["turns_answered"] == 2
        assert len(s["turn_decode_s"]) == len(s["turn_forwards"]) == len(s["turn_accepted_per_step"]) == 2
    for s in samples:
        assert s["category"] and s["score"]["category"] == s["category"]
        assert sum(len(t) for t in s["turn_accepted_per_step"]) == s["forwards"]
        assert sum(s["acceptance"]["histogram"].values()) == s["forwards"] - len(s["turn_lengths"])


def test_summary_has_per_category_results_and_acceptance(spec_run):
    results = json.loads((spec_run / "summary.json").read_text())["results"]
    ar, pl, jac = results
    assert ar["accuracy"] is None and "not applicable" in ar["task_metrics"]["note"]
    for rec in results:
        assert list(rec["by_category"]) == [*SPEC_BENCH_GROUPS, OVERALL]
        assert rec["by_category"]["mt_bench"]["n_samples"] == 2
        assert rec["by_category"][OVERALL]["n_samples"] == 7
        overall = rec["by_category"][OVERALL]
        assert overall["tokens_per_s"] == pytest.approx(rec["tokens_per_s"])
        assert overall["speedup"] == pytest.approx(rec["speedup"])
        assert overall["tokens_per_forward"] == pytest.approx(rec["tokens_per_forward"])
        assert overall["speedup_min"] <= overall["speedup_max"]
    assert all(g["speedup"] == pytest.approx(1.0) for g in ar["by_category"].values())
    assert ar["accepted_length_with_bonus"] is None  # one token per forward: not applicable
    for rec in (pl, jac):
        assert rec["accepted_length_with_bonus"] == pytest.approx(rec["accepted_length_draft_only"] + 1, abs=1.0)
        assert rec["accepted_length_draft_only"] >= 0
        n = rec["acceptance_position_trials"]
        assert len(rec["acceptance_per_position"]) == len(n) and n[0] > 0
        decode_forwards = rec["generated_tokens"] / rec["tokens_per_forward"] - (7 + 2)  # minus one prefill per turn
        assert sum(rec["accepted_length_histogram"].values()) == pytest.approx(decode_forwards)


def test_export_round_trips_into_our_reader(spec_run, tmp_path):
    out = tmp_path / "sb"
    assert main(["export", "--format", "spec-bench", str(spec_run), "--output", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3
    samples = {(s["decoder"], s["sample_id"]): s for s in map(json.loads, (spec_run / "samples.jsonl").read_text().splitlines())}
    by_decoder = {}
    for path in out.iterdir():
        answers = read_answers(path)
        assert [a.question_id for a in answers] == [1, 2, 3, 4, 5, 6, 7]
        decoder = next(d for d in ("prompt_lookup:k=3", "jacobi:n=4", "ar") if path.stem.endswith(d.replace(":", "_")))
        by_decoder[decoder] = answers
        for a in answers:
            s = samples[(decoder, f"spec_bench/{a.question_id}")]
            (c,) = a.choices
            assert a.category == s["category"]
            assert c.turns == s["completions"] and c.new_tokens == s["turn_lengths"]
            assert c.decoding_steps == s["turn_forwards"] and sum(c.accept_lengths) == sum(c.new_tokens)
            assert c.wall_time == pytest.approx([a + b for a, b in zip(s["turn_ttft_s"], s["turn_decode_s"])])
    assert all(x == 1 for a in by_decoder["ar"] for x in a.choices[0].accept_lengths)
    speed = spec_bench_speed(by_decoder["jacobi:n=4"], by_decoder["ar"])
    assert list(speed) == [*SPEC_BENCH_GROUPS, OVERALL]
    assert speed[OVERALL]["n_questions"] == 7 and speed[OVERALL]["speedup"] > 0
    assert spec_bench_speed(by_decoder["ar"], by_decoder["ar"])[OVERALL]["mean_accepted_tokens"] == 1.0
    # one decoder into one named file
    single = tmp_path / "ar.jsonl"
    assert main(["export", str(spec_run), "--decoder", "ar", "--output", str(single)]) == 0
    assert [a.model_id for a in read_answers(single)] == [by_decoder["ar"][0].model_id] * 7


def test_export_and_reader_errors(spec_run, tmp_path, capsys):
    assert main(["export", str(spec_run), "--decoder", "medusa"]) == 2
    assert "no samples of decoder 'medusa'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "category": "qa", "model_id": "m", "choices": [
        {"turns": ["a", "b"], "new_tokens": [1], "wall_time": [0.1, 0.2], "accept_lengths": [1]}]}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match="bad.jsonl:1: new_tokens must have one entry per turn"):
        read_answers(bad)


def test_report_has_per_category_acceptance_and_leaderboard_sections(spec_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(spec_run), "--output", str(out), "--format", "md,html,csv"]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Per category", "## Acceptance", "## Spec-Bench leaderboard side by side"):
        assert heading in md
    assert "multi-turn conversation" in md and "retrieval-aug. generation" in md
    assert "accepted len (with bonus)" in md and "accepted len (draft only)" in md
    assert "PLD (published)" in md and "prompt_lookup:k=3 (ours)" in md
    assert "Other models and hardware" in md
    html = (out / "report.html").read_text()
    assert 'id="per-category"' in html and 'id="acceptance"' in html and 'id="spec-bench-leaderboard"' in html
    for name in ("category_speedup", "acceptance_per_position", "accepted_length_histogram"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in md


def _rec(sid: str, category: str, tokens: int, decode: list[float], forwards: int) -> dict:
    return {"sample_id": sid, "category": category, "generated_tokens": tokens, "decode_s": sorted(decode)[len(decode) // 2],
            "decode_s_repeats": decode, "forwards": forwards, "tokens_per_s": tokens / sorted(decode)[len(decode) // 2]}  # fmt: skip


def test_category_results_group_mt_bench_and_compare_with_ar_on_the_same_questions():
    from cllm_bench.by_category import category_results

    ar = [_rec("a", "writing", 10, [1.0], 10), _rec("b", "coding", 10, [1.0], 10), _rec("c", "qa", 20, [2.0], 20)]
    dec = [_rec("a", "writing", 10, [0.5], 5), _rec("b", "coding", 10, [0.25], 4), _rec("c", "qa", 20, [4.0], 20)]
    out = category_results(dec, ar)
    assert list(out) == ["mt_bench", "qa", OVERALL]  # writing + coding pooled, Spec-Bench order
    assert out["mt_bench"]["n_samples"] == 2
    assert out["mt_bench"]["speedup"] == pytest.approx((20 / 0.75) / (20 / 2.0))
    assert out["mt_bench"]["tokens_per_forward"] == pytest.approx(20 / 9)
    assert out["qa"]["speedup"] == pytest.approx(0.5)
    assert out[OVERALL]["speedup"] == pytest.approx((40 / 4.75) / (40 / 4.0))
    # Spec-Bench's own formula: mean of per-question speeds ÷ ar's
    assert out[OVERALL]["speedup_mean_of_speeds"] == pytest.approx(((20 + 40 + 5) / 3) / ((10 + 10 + 10) / 3))
    assert category_results([{k: v for k, v in r.items() if k != "category"} for r in dec], ar) is None
