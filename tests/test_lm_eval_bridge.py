"""cllm_bench.lm_eval_bridge: lm-eval's ``--model cllm-bench`` and ``--tasks lm_eval:<task>``.

Offline: the lm-eval tasks are YAML files in a temporary folder reading local JSON lines
(``dataset_path: json``), the model is the tiny random Llama of conftest. Skipped when
lm-eval is not installed (CI installs only ``.[test]``), except the check that a missing
lm-eval gives a clear error.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm-eval imports datasets
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL, reason="lm-eval not installed (pip install 'cllm-bench[lm-eval]')")

QUESTIONS = ["1+1?", "2+2?", "What is 3+4?", "Name a color.", "Count to 3."]
MAX_TOKENS = 8


def task_yaml(name: str, data: Path, cache: Path, *, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
          cache_dir: {cache}
        test_split: test
        output_type: generate_until
        doc_to_text: "Q: {{{{question}}}}\\nA:"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: {MAX_TOKENS}
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        """) + textwrap.dedent(extra)


STRICT_AND_RAW = """\
filter_list:
  - name: strict
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
  - name: raw
    filter:
      - function: take_first
"""


def write_task(folder: Path, name: str, answers: list[str], extra: str = "") -> Path:
    """A task folder with ``name``.yaml and its data (one doc per question)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, answers)))
    (folder / f"{name}.yaml").write_text(task_yaml(name, data, folder / "hf-cache", extra=extra))
    return folder


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_missing_lm_eval_is_a_clear_user_error():
    code = textwrap.dedent("""\
        import sys
        sys.modules["lm_eval"] = None  # as if not installed
        import cllm_bench, cllm_bench.scoring  # cllm-bench itself imports without lm-eval
        from cllm_bench.errors import UserError
        try:
            import cllm_bench.lm_eval_bridge
        except UserError as err:
            print("USER_ERROR", err)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "USER_ERROR lm_eval:<task> needs lm-eval: pip install 'cllm-bench[lm-eval]'" in out.stdout


# ----------------------------------------------------------------------- with lm-eval
@pytest.fixture(scope="module")
def bridge():
    if not HAVE_LM_EVAL:
        pytest.skip("lm-eval not installed (pip install 'cllm-bench[lm-eval]')")
    import cllm_bench.lm_eval_bridge as bridge

    return bridge


@pytest.fixture(scope="module")
def echo_tasks(tmp_path_factory) -> Path:
    """tiny_echo (strict + raw filters), tiny_fewshot (2-shot), tiny_mc (multiple choice)."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    write_task(folder, "tiny_echo", ["2", "4", "7", "red", "1 2 3"], STRICT_AND_RAW)
    write_task(folder, "tiny_fewshot", ["2", "4", "7", "red", "1 2 3"], "fewshot_split: test\nnum_fewshot: 2\n")
    mc = folder / "mc"
    write_task(mc, "tiny_mc", ["0"] * 5)
    text = (mc / "tiny_mc.yaml").read_text().replace("output_type: generate_until", "output_type: multiple_choice")
    (mc / "tiny_mc.yaml").write_text(text + 'doc_to_choice: ["a", "b"]\n')
    return folder


def model_args(tiny_model_dir: Path, decoder: str = "jacobi:n=4") -> dict:
    return {"pretrained": str(tiny_model_dir), "decoder": decoder, "dtype": "float32", "device": "cpu"}


def lm_eval_run(tasks_dir: Path, task: str, tiny_model_dir: Path, **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="cllm-bench", model_args=model_args(tiny_model_dir), tasks=[task], log_samples=True,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False), **kwargs,
    )  # fmt: skip


def cllm_bench_run(tmp_path: Path, tasks_dir: Path, task: str, tiny_model_dir: Path) -> Path:
    """``cllm-bench run --tasks lm_eval:<task>`` through the runner (ar + jacobi)."""
    from cllm_bench import runner

    config = runner.RunConfig(
        models=[str(tiny_model_dir)], decoders=["ar", "jacobi:n=4"], tasks=[f"lm_eval:{task}"], limit=None,
        max_new_tokens=MAX_TOKENS, device="cpu", dtype="float32", prompt_style="raw", warmup=0,
        task_args={"include_path": str(tasks_dir), "include_defaults": "false"}, output_path=str(tmp_path / "run"),
    )  # fmt: skip
    return runner.run_matrix(config, quiet())


def read_samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


@needs_lm_eval
def test_model_type_is_registered_next_to_lm_evals_own(bridge):
    from lm_eval.api.registry import get_model

    assert get_model("cllm-bench") is bridge.CLLMBenchLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models stay reachable
    bridge.register()  # idempotent
    assert get_model("cllm-bench") is bridge.CLLMBenchLM


@needs_lm_eval
def test_lm_eval_and_cllm_bench_agree_on_outputs_and_metrics(bridge, echo_tasks, tiny_model_dir, tmp_path):
    results = lm_eval_run(echo_tasks, "tiny_echo", tiny_model_dir)
    logged = sorted(results["samples"]["tiny_echo"], key=lambda s: (s["doc_id"], s["filter"]))
    lm_outputs = {s["doc_id"]: s["resps"][0][0] for s in logged}
    run = cllm_bench_run(tmp_path, echo_tasks, "tiny_echo", tiny_model_dir)
    records = read_samples(run)
    assert {r["decoder"] for r in records} == {"ar", "jacobi:n=4"} and all(r["match_ar"] for r in records)
    for rec in records:
        doc_id = int(rec["sample_id"].split("/")[1])
        assert rec["sample_id"] == f"tiny_echo/{doc_id}"
        assert bridge.cut_at_stops(rec["completions"][0], ["\n"]) == lm_outputs[doc_id]
        assert rec["generated_tokens"] <= MAX_TOKENS
    summary = json.loads((run / "summary.json").read_text())["results"]
    lm_metrics = results["results"]["tiny_echo"]
    for cell in summary:
        metrics = cell["task_metrics"]
        assert metrics["primary_metric"] == "exact_match,strict"
        assert metrics["exact_match,strict"] == pytest.approx(lm_metrics["exact_match,strict"])
        assert metrics["exact_match,raw"] == pytest.approx(lm_metrics["exact_match,raw"])
        assert cell["accuracy"] == metrics["exact_match,strict"] and cell["tokens_per_s"] > 0
    from cllm_bench.scoring import rescore_run
    from cllm_bench.tasks.base import TaskOptions

    rescored = json.loads(rescore_run(run, TaskOptions(), quiet()).read_text())["results"]  # include_path from the run
    assert [r["task_metrics"] for r in rescored] == [r["task_metrics"] for r in summary]


@needs_lm_eval
def test_gold_answers_score_one_in_both_directions(bridge, echo_tasks, tiny_model_dir, tmp_path):
    """Data whose answers are the model's own greedy outputs: exact match 1.0 everywhere."""
    from cllm_bench.scoring import score_predictions
    from cllm_bench.tasks.base import TaskOptions

    run = cllm_bench_run(tmp_path, echo_tasks, "tiny_echo", tiny_model_dir)
    ar = [r for r in read_samples(run) if r["decoder"] == "ar"]
    outputs = {r["sample_id"]: bridge.cut_at_stops(r["completions"][0], ["\n"]) for r in ar}
    gold_dir = write_task(tmp_path / "gold", "tiny_gold", [outputs[f"tiny_echo/{i}"] for i in range(len(QUESTIONS))])
    results = lm_eval_run(gold_dir, "tiny_gold", tiny_model_dir)
    assert results["results"]["tiny_gold"]["exact_match,none"] == 1.0
    preds = tmp_path / "preds.jsonl"
    rows = [{"id": f"tiny_gold/{i}", "completion": outputs[f"tiny_echo/{i}"] + "\nQ: more"} for i in range(len(QUESTIONS))]
    preds.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = TaskOptions(prompt_style="raw", extra={"include_path": str(gold_dir), "include_defaults": "false"})
    doc = score_predictions("lm_eval:tiny_gold", preds, options, None, quiet())
    assert doc["metrics"]["accuracy"] == 1.0 and doc["metrics"]["exact_match,none"] == 1.0
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"id": "tiny_gold/0", "completion": outputs["tiny_echo/0"] + "x"}) + "\n")
    assert score_predictions("lm_eval:tiny_gold", wrong, options, None, quiet())["metrics"]["accuracy"] == 0.0


@needs_lm_eval
def test_chat_prompts_match_lm_evals_apply_chat_template(bridge, echo_tasks, tiny_model_dir):
    from cllm_bench.models import load_model
    from cllm_bench.tasks.base import TaskOptions

    results = lm_eval_run(echo_tasks, "tiny_echo", tiny_model_dir, apply_chat_template=True)
    contexts = {s["doc_id"]: s["arguments"][0][0] for s in results["samples"]["tiny_echo"]}
    assert contexts[0].startswith("<s>user: Q: 1+1?")
    tokenizer = load_model(str(tiny_model_dir), dtype="float32", device="cpu").tokenizer
    options = TaskOptions(prompt_style="chat", extra={"include_path": str(echo_tasks), "include_defaults": "false"})
    task = bridge.make_lm_eval_task("tiny_echo", options)
    for sample in task.samples(None):
        assert task.prompt_ids(sample, tokenizer) == bridge.encode_context(tokenizer, contexts[sample.data["doc_id"]])


@needs_lm_eval
def test_fewshot_contexts_are_lm_evals_and_stable(bridge, echo_tasks):
    from cllm_bench.tasks.base import TaskOptions

    options = TaskOptions(prompt_style="raw", extra={"include_path": str(echo_tasks), "include_defaults": "false"})
    task = bridge.make_lm_eval_task("tiny_fewshot", options)
    first = [s.data["context"] for s in task.samples(None)]
    assert first == [s.data["context"] for s in task.samples(None)]  # same prompts on every call
    assert all(ctx.count("Q: ") == 3 for ctx in first)  # 2 shots + the question
    reference = bridge.load_lm_eval_task("tiny_fewshot", str(echo_tasks), include_defaults=False)
    reference.set_fewshot_seed(seed=bridge.DEFAULT_FEWSHOT_SEED)
    reference.build_all_requests()
    assert [inst.args[0] for inst in reference.instances] == first
    three = bridge.make_lm_eval_task("tiny_fewshot", TaskOptions(extra=options.extra | {"num_fewshot": "0"}))
    assert [s.data["context"] for s in three.samples(2)] == ["Q: 1+1?\nA:", "Q: 2+2?\nA:"]


@needs_lm_eval
def test_generate_until_cuts_at_stop_strings_and_refuses_loglikelihood(bridge, tiny_model_dir):
    from lm_eval.api.instance import Instance

    lm = bridge.CLLMBenchLM(**model_args(tiny_model_dir, decoder="ar"), max_gen_toks=MAX_TOKENS)
    full = lm.generate_one("Q: 1+1?\nA:", {"until": [], "max_gen_toks": 12})
    assert full and lm.stats.generated_tokens <= 12
    stop = full[3:5] if len(full.strip()) >= 5 else full[-1]
    request = Instance("generate_until", {}, ("Q: 1+1?\nA:", {"until": [stop], "max_gen_toks": 12}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [full[: full.find(stop)]]
    assert lm.stats.requests == 2 and lm.stats.as_dict()["tokens_per_forward"] == 1.0
    with pytest.raises(NotImplementedError, match="use --model hf for loglikelihood tasks"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="cllm-bench measures generation"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="unknown model_args decoders"):
        bridge.CLLMBenchLM(pretrained=str(tiny_model_dir), decoders="ar")


@needs_lm_eval
def test_decoder_parameters_may_use_semicolons(bridge, tiny_model_dir):
    lm = bridge.CLLMBenchLM(**(model_args(tiny_model_dir) | {"decoder": "lookahead:w=3;n=3;g=3"}), max_gen_toks=4)
    assert lm.decoder.label.startswith("lookahead") and "w=3" in lm.decoder.label


@needs_lm_eval
def test_bad_lm_eval_task_names_are_user_errors(bridge, echo_tasks):
    from cllm_bench.errors import UserError
    from cllm_bench.tasks.base import TaskOptions

    only_here = {"include_path": str(echo_tasks), "include_defaults": "false"}
    with pytest.raises(UserError, match=r"unknown lm-eval task 'nope' under .*lm-eval ls tasks"):
        bridge.make_lm_eval_task("nope", TaskOptions(extra=only_here))
    mc = {"include_path": str(echo_tasks / "mc"), "include_defaults": "false"}
    with pytest.raises(UserError, match="multiple_choice task; cllm-bench runs only generate_until"):
        bridge.make_lm_eval_task("tiny_mc", TaskOptions(extra=mc))
    with pytest.raises(UserError, match="num_fewshot='x' must be a non-negative integer"):
        bridge.make_lm_eval_task("tiny_echo", TaskOptions(extra=only_here | {"num_fewshot": "x"}))


@needs_lm_eval
@pytest.mark.slow  # lm-eval's command line indexes all its built-in tasks (~15 s)
def test_command_line_entry_point_registers_the_model(tiny_model_dir, echo_tasks, tmp_path):
    """``python -m cllm_bench.lm_eval_bridge`` = ``lm_eval`` with --model cllm-bench known."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "cllm_bench.lm_eval_bridge", "--model", "cllm-bench",
        "--model_args", f"pretrained={tiny_model_dir},decoder=jacobi:n=4,dtype=float32,device=cpu",
        "--tasks", "tiny_echo", "--include_path", str(echo_tasks), "--limit", "2", "--output_path", str(out),
    ]  # fmt: skip
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exact_match" in proc.stdout and list(out.rglob("results_*.json"))
