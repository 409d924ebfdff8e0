"""Extending cllm-bench from outside the package: plugins, entry points, task templates,
the check-decoder battery, and the docs' examples (which must equal the example files)."""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from cllm_bench.conformance import check_decoder
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.errors import DataError, UserError
from cllm_bench.plugins import load_plugins
from cllm_bench.registry import DECODERS, TASKS
from cllm_bench.tasks.base import Sample, TaskOptions
from cllm_bench.tasks.template import load_task_template
from conftest import REPO, prompts

EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _isolated_registries():
    """Every test starts from the registries (and plugin modules) it found, and leaves them so."""
    state = (DECODERS.snapshot(), TASKS.snapshot())
    modules = set(sys.modules)
    yield
    DECODERS.restore(state[0])
    TASKS.restore(state[1])
    for name in set(sys.modules) - modules:
        if name.startswith(("cllm_bench_plugin_", "cbx_")):
            del sys.modules[name]


def console() -> Console:
    return Console(file=io.StringIO(), width=220, highlight=False)


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def cli_has_include() -> bool:
    """Whether `cllm-bench run` already takes --include (the CLI wiring lands separately)."""
    from cllm_bench.cli import build_parser

    try:
        args = build_parser().parse_args(["run", "--include", "x.py"])
    except SystemExit:
        return False
    return getattr(args, "include", None) is not None


# ------------------------------------------------------------------ docs and public API
def test_docs_embed_the_example_files_verbatim():
    doc = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)^```$", doc, re.S | re.M)
    assert {path for path, _ in blocks} == {
        "examples/ngram_echo_decoder.py", "examples/word_count_task.py", "examples/arith_task.toml",
    }  # fmt: skip
    for path, body in blocks:
        assert body == (REPO / path).read_text(encoding="utf-8"), f"docs/extending.md is stale for {path}"
    for path in ("ngram_echo_decoder.py", "word_count_task.py"):
        assert len((EXAMPLES / path).read_text().splitlines()) < 100


def test_public_api_is_importable_from_the_package_without_torch():
    code = (
        "import sys, cllm_bench\n"
        "from cllm_bench import register_decoder, register_task, Decoder, OutputBuffer, Trace, Step, JacobiBlock, "
        "check_trace, Task, TaskOptions, Sample, encode_chat, encode_raw\n"
        "assert 'torch' not in sys.modules, 'import cllm_bench pulled in torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    import cllm_bench
    import cllm_bench.api as api

    assert all(getattr(cllm_bench, n) is getattr(api, n) for n in api.__all__)
    assert {"register_decoder", "Engine", "JacobiBlock", "encode_raw"} <= set(dir(cllm_bench))


# ------------------------------------------------------------------ out-of-tree plugins in a run
def test_out_of_tree_decoder_and_task_run_in_the_matrix(tiny_model_dir, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("ngram_echo_decoder.py", "word_count_task.py", "arith_task.toml", "arith.jsonl"):
        shutil.copy(EXAMPLES / name, plugins / name)
    include = [str(plugins), str(plugins / "arith_task.toml")]
    out = tmp_path / "run"
    argv = [
        "run", "--models", str(tiny_model_dir), "--decoders", "ar,ngram_echo:k=4", "--tasks", "word_count,arith",
        "--limit", "3", "--max-new-tokens", "12", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
        "--output-path", str(out),
    ]  # fmt: skip
    if cli_has_include():
        from cllm_bench.cli import main

        assert main([*argv, "--include", include[0], "--include", include[1]]) == 0
    else:
        from cllm_bench.runner import RunConfig, run_matrix

        loaded = load_plugins(include)
        assert loaded[:3] == [
            f"{(plugins / 'ngram_echo_decoder.py').resolve()}: decoder ngram_echo",
            f"{(plugins / 'word_count_task.py').resolve()}: task word_count",
            f"{(plugins / 'arith_task.toml').resolve()}: task arith",
        ]
        assert load_plugins(include)[:3] == loaded[:3]  # idempotent: no clash, nothing re-registered
        config = RunConfig(models=[str(tiny_model_dir)], decoders=["ar", "ngram_echo:k=4"], tasks=["word_count", "arith"],
                           limit=3, max_new_tokens=12, warmup=0, device="cpu", dtype="float32", output_path=str(out))  # fmt: skip
        run_matrix(config, console(), results_root=tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    cells = {(r["decoder"], r["task"]): r for r in summary["results"]}
    assert set(cells) == {(d, t) for d in ("ar", "ngram_echo:k=4") for t in ("word_count", "arith")}
    for (decoder, task), cell in cells.items():
        assert cell["n_samples"] == 3 and cell["match_ar"] == 1.0, (decoder, task)
        assert cell["accuracy"] is not None and cell["tokens_per_forward"] >= 1.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["sample_id"] for s in samples if s["task"] == "arith"} == {"arith/q0", "arith/q1", "arith/q2"}
    assert all("correct" in s["score"] for s in samples)


def test_example_decoder_is_lossless_and_fast_on_a_repetitive_model():
    from test_baselines import cyclic_model

    model = cyclic_model()
    load_plugins([str(EXAMPLES / "ngram_echo_decoder.py")])
    for max_new in (1, 2, 9, 60):
        engine = Engine(model)
        trace = build_decoder("ngram_echo:k=8").generate(engine, [20, 30, 40], max_new, frozenset({10_000}))
        ar = build_decoder("ar").generate(Engine(model), [20, 30, 40], max_new, frozenset({10_000}))
        assert trace.tokens == ar.tokens
        assert engine.forwards == len(trace.steps)
    assert len(trace.tokens) / len(trace.steps) >= 4  # once the 7-cycle shows, 9 tokens per forward


def test_word_count_task_reads_its_data_dir(tmp_path):
    load_plugins([str(EXAMPLES / "word_count_task.py")])
    subprocess.run([sys.executable, str(EXAMPLES / "word_count_task.py"), str(tmp_path)], check=True, capture_output=True)
    task = TASKS.get("word_count")(TaskOptions(data_dir=tmp_path))
    builtin = TASKS.get("word_count")(TaskOptions())
    assert [s.data for s in task.samples(3)] == [s.data for s in builtin.samples(3)]
    sample = task.samples(1)[0]
    assert task.score(sample, ["It has 6 words."])["correct"] is True
    assert task.aggregate([task.score(sample, ["7"])])["accuracy"] == 0.0
    with pytest.raises(DataError, match="word_count"):
        TASKS.get("word_count")(TaskOptions(data_dir=tmp_path / "nowhere")).samples()


# ------------------------------------------------------------------ entry points
def make_distribution(site: Path, name: str, entry_points: str, files: dict[str, str]) -> None:
    """A minimal installed distribution: modules + ``<name>-0.1.dist-info`` with entry points."""
    for rel, source in files.items():
        write(site / rel, source)
    info = site / f"{name}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    write(info / "entry_points.txt", entry_points)


def test_entry_points_register_installed_decoders_and_tasks(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(site, "cbx-plugins", "[cllm_bench.decoders]\ncbx_ar = cbx_plugins:PlainAR\n\n"
                      "[cllm_bench.tasks]\ncbx_words = cbx_plugins.words\n", {
        "cbx_plugins/__init__.py": """
            from dataclasses import dataclass
            from cllm_bench.decoders.ar import ARDecoder

            @dataclass
            class PlainAR(ARDecoder):
                description = "ar, registered by an entry point"
            """,
        "cbx_plugins/words.py": (EXAMPLES / "word_count_task.py").read_text().replace('"word_count"', '"cbx_words"'),
    })  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    loaded = load_plugins(None)
    assert "entry point cllm_bench.decoders:cbx_ar (cbx-plugins): decoder cbx_ar" in loaded
    assert "entry point cllm_bench.tasks:cbx_words (cbx-plugins): task cbx_words" in loaded
    assert load_plugins(None) == loaded  # idempotent
    assert DECODERS.get("cbx_ar").__name__ == "PlainAR" and DECODERS.origin("cbx_ar").endswith("__init__.py")
    assert TASKS.get("cbx_words")().samples(2)[0].id == "word_count/0"
    assert check_decoder("cbx_ar", console())  # the same battery as the built-ins


def test_a_broken_entry_point_names_the_distribution(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(site, "cbx-broken", "[cllm_bench.decoders]\ncbx_bad = cbx_broken:Missing\n",
                      {"cbx_broken.py": "import math\n"})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(UserError, match=r"cbx_bad \(cbx-broken\) = cbx_broken:Missing failed to load: AttributeError"):
        load_plugins(None)


# ------------------------------------------------------------------ check-decoder
@pytest.mark.parametrize("spec", ["ar", "jacobi:n=4", "lookahead", "prompt_lookup",
                                  "speculative:draft=self:layers=1,k=3", "ngram_echo", "ngram_echo:k=3,ngram=1",
                                  "echo_chain", "echo_chain:k=3,ngram=1"])  # fmt: skip
def test_check_decoder_passes_for_built_ins_and_the_example(spec):
    load_plugins([str(EXAMPLES / "ngram_echo_decoder.py"), str(EXAMPLES / "echo_chain_decoder.py")])
    out = console()
    assert check_decoder(spec, out), out.file.getvalue()
    text = out.file.getvalue()
    assert "all checks passed" in text and "same tokens as ar" in text and "FAIL" not in text


BROKEN_DECODERS = {
    # argmax decoding that replaces every 5th token: must fail losslessness at index 4
    "lossy": ("same tokens as ar", "first divergence at index 4", """
        if len(out.tokens) % 5 == 4:
            tok = (tok + 1) % 96
    """),
    # a forward the trace never hears of: must fail the forward count
    "sneaky": ("forwards counted", "engine.forwards = ", """
        engine.forward(engine.ids_tensor([tok]))
        engine.rollback(engine.length - 1)
    """),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BROKEN_DECODERS))
def test_check_decoder_fails_a_broken_decoder_and_says_why(tmp_path, name):
    row, message, twist = BROKEN_DECODERS[name]
    source = f"""
        from dataclasses import dataclass
        from cllm_bench import Decoder, OutputBuffer, Trace, register_decoder

        @register_decoder("{name}")
        @dataclass
        class Broken(Decoder):
            def generate(self, engine, prompt_ids, max_new_tokens, eos_ids):
                trace, out = Trace(prompt_len=len(prompt_ids)), OutputBuffer(max_new_tokens, eos_ids)
                tok = int(engine.prefill(prompt_ids).argmax())
                trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([tok]))
                while not out.done:
                    tok = int(engine.forward(engine.ids_tensor([tok]))[0, -1].argmax())
{textwrap.indent(textwrap.dedent(twist), " " * 20)}
                    trace.record("target", fed=1, accepted=out.accept([tok]))
                return out.finish(trace)
    """
    load_plugins([str(write(tmp_path / f"{name}.py", source))])
    out = console()
    assert check_decoder(name, out) is False
    text = out.file.getvalue()
    assert re.search(rf"{row}\s+│ FAIL", text), text
    assert message in text and "some checks failed" in text


def test_check_decoder_refuses_an_unknown_decoder():
    with pytest.raises(UserError, match="unknown decoder 'nope'"):
        check_decoder("nope", console())


# ------------------------------------------------------------------ bad plugins
GOOD_DECODER = textwrap.dedent("""\
    from dataclasses import dataclass
    from cllm_bench import Decoder, register_decoder

    @register_decoder("{name}")
    @dataclass
    class Mine(Decoder):
        def generate(self, engine, prompt_ids, max_new_tokens, eos_ids):
            raise NotImplementedError
""")

BAD_PLUGINS = {
    "import_error": ("import os\nimport no_such_package_xyz\n", r"failed to import: ModuleNotFoundError: .*no_such_package_xyz.*:2\)"),
    "clash_builtin": (GOOD_DECODER.format(name="ar"), r"'ar' .* clashes with the built-in decoder"),
    "no_generate": ("from dataclasses import dataclass\nfrom cllm_bench import Decoder, register_decoder\n\n"
                    "@register_decoder('nogen')\n@dataclass\nclass NoGen(Decoder):\n    n: int = 3\n",
                    r"has no generate method"),
    "not_a_decoder": ("from cllm_bench import register_decoder\n\n@register_decoder('plain')\nclass Plain:\n"
                      "    def generate(self, engine, prompt_ids, max_new_tokens, eos_ids): pass\n",
                      r"is not a Decoder subclass"),
    "no_dataclass": ("from cllm_bench import Decoder, register_decoder\n\n@register_decoder('nodc')\nclass NoDC(Decoder):\n"
                     "    def generate(self, engine, prompt_ids, max_new_tokens, eos_ids): pass\n",
                     r"is not a dataclass; put @dataclass"),
    "task_no_score": ("from cllm_bench import Task, register_task\n\n@register_task('noscore')\nclass NoScore(Task):\n"
                      "    def samples(self, limit=None): return []\n"
                      "    def prompt_ids(self, sample, tokenizer, previous_answers=None): return []\n"
                      "    def aggregate(self, scores): return {'accuracy': None}\n",
                      r"task 'noscore': NoScore .* does not define score"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugins_give_one_error_naming_the_file(tmp_path, case):
    source, pattern = BAD_PLUGINS[case]
    path = write(tmp_path / f"{case}.py", source)
    with pytest.raises(UserError, match=pattern) as err:
        load_plugins([str(path)])
    assert str(path) in str(err.value)


def test_missing_path_and_plugin_clash_name_the_files(tmp_path):
    with pytest.raises(UserError, match=r"--include .*nowhere\.py: no such file or folder"):
        load_plugins([str(tmp_path / "nowhere.py")])
    first = write(tmp_path / "a" / "first.py", GOOD_DECODER.format(name="twin"))
    second = write(tmp_path / "b" / "second.py", GOOD_DECODER.format(name="twin"))
    load_plugins([str(first)])
    with pytest.raises(UserError, match="already registered") as err:
        load_plugins([str(second)])
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert DECODERS.origin("twin") == str(first.resolve())


def test_a_plugin_failing_half_way_leaves_nothing_registered(tmp_path):
    path = write(tmp_path / "half.py", GOOD_DECODER.format(name="half") + "\nraise RuntimeError('late failure')\n")
    with pytest.raises(UserError, match=r"RuntimeError: late failure \(at .*half\.py:10\)"):
        load_plugins([str(path)])
    assert "half" not in DECODERS.names()
    with pytest.raises(UserError, match="late failure"):  # still failing, never "already registered"
        load_plugins([str(path)])


def test_register_from_python_code_validates_too():
    from cllm_bench import Decoder, register_decoder

    with pytest.raises(UserError, match="has no generate method"):
        register_decoder("incomplete")(type("Incomplete", (Decoder,), {}))
    with pytest.raises(UserError, match="not valid"):
        register_decoder("bad:name")(DECODERS.get("ar"))


# ------------------------------------------------------------------ task templates
def template(tmp_path: Path, body: str, records: list[dict] | None = None, name: str = "t.toml") -> Path:
    if records is not None:
        write(tmp_path / "data.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return write(tmp_path / name, body)


def test_template_task_formats_extracts_and_scores(tmp_path):
    from conftest import byte_tokenizer

    records = [{"id": "a", "q": "2+2", "answer": "4"}, {"id": "b", "q": "3*3", "answer": "9"}]
    path = template(tmp_path, """
        name = "tmpl"
        data = "data.jsonl"
        id_field = "id"
        prompt = "Compute {q}. {{braces}}"
        style = "raw"
        answer_field = "answer"
        extractor = "regex"
        pattern = 'answer: *(\\d+)'
        scorer = "numeric_match"
        stop = ["STOP"]
        default_max_new_tokens = 7
    """, records)  # fmt: skip
    cls = load_task_template(path)
    assert load_task_template(path) is cls and load_plugins([str(path)]) == [f"{path.resolve()}: task tmpl"]
    assert cls.default_max_new_tokens == 7 and not cls.requires_execution
    task = cls(TaskOptions())
    samples = task.samples()
    assert [s.id for s in samples] == ["tmpl/a", "tmpl/b"]
    tok = byte_tokenizer()
    assert tok.decode(task.prompt_ids(samples[0], tok)) == "Compute 2+2. {braces}"
    assert task.score(samples[0], ["answer: 3 ... answer: 4.0 STOP answer: 5"])["correct"] is True
    assert task.score(samples[1], ["no idea"]) == {"correct": False, "pred": None, "gold": "9", "reason": "no answer found"}
    chat = cls(TaskOptions(prompt_style="chat")).prompt_ids(samples[0], tok)
    assert tok.decode(chat).startswith("<s>user: Compute 2+2.")
    agg = task.aggregate([task.score(samples[0], ["answer: 4"]), task.score(samples[1], ["answer: 8"])])
    assert agg["accuracy"] == 0.5


def test_template_code_and_sql_execution_are_opt_in(tmp_path):
    code = load_task_template(template(tmp_path, """
        name = "tcode"
        data = "data.jsonl"
        prompt = "Write add(a, b). {hint}"
        answer_field = "hint"
        extractor = "code_block"
        scorer = "code_execution"
        test_field = "test"
    """, [{"hint": "", "test": "assert add(2, 3) == 5"}], name="code.toml"))  # fmt: skip
    sample = code(TaskOptions()).samples()[0]
    answer = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert code.requires_execution and code(TaskOptions()).score(sample, [answer])["correct"] is None
    assert code(TaskOptions()).aggregate([code(TaskOptions()).score(sample, [answer])])["accuracy"] is None
    allowed = code(TaskOptions(allow_code_execution=True))
    assert allowed.score(sample, [answer])["correct"] is True
    assert allowed.score(sample, [answer.replace("a + b", "a - b")])["correct"] is False

    db = tmp_path / "db" / "shop.sqlite"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("create table item (name text, price int)")
        conn.executemany("insert into item values (?, ?)", [("pen", 2), ("cup", 5)])
    sql = load_task_template(template(tmp_path, """
        name = "tsql"
        data = "data.jsonl"
        prompt = "{question}"
        answer_field = "query"
        extractor = "sql_block"
        scorer = "sql_execution"
        db_field = "db"
    """, [{"question": "Names of items?", "query": "SELECT name FROM item", "db": "db/shop.sqlite"}], name="sql.toml"))  # fmt: skip
    task = sql(TaskOptions(allow_code_execution=True))
    sample = task.samples()[0]
    assert task.score(sample, ["```sql\nselect name from item order by price desc\n```"])["correct"] is True
    assert task.score(sample, ["```sql\nselect price from item\n```"])["correct"] is False
    assert task.score(sample, ["```sql\ndrop table item\n```"])["correct"] is False
    assert sqlite3.connect(db).execute("select count(*) from item").fetchone() == (2,)


def test_yaml_templates_load_too(tmp_path):
    pytest.importorskip("yaml")
    path = template(tmp_path, """
        name: tyaml
        data: data.jsonl
        prompt: "Say {word}"
        answer_field: word
        scorer: exact_match
        ignore_case: true
    """, [{"word": "Hello"}], name="t.yaml")  # fmt: skip
    task = load_plugins([str(path)]) and TASKS.get("tyaml")(TaskOptions())
    assert task.score(task.samples()[0], ["  hello "])["correct"] is True


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ('name = "x"\ndata = "data.jsonl"\nprompt = "{q}"\nanswer_field = "a"\npromt = 1\n', "unknown key"),
        ('name = "x"\nprompt = "{q}"\nanswer_field = "a"\n', "exactly one data source"),
        ('name = "x"\ndata = "data.jsonl"\nprompt = "{q}"\nanswer_field = "a"\nscorer = "bleu"\n', "scorer = 'bleu'"),
        ('name = "x"\ndata = "data.jsonl"\nprompt = "{q}"\nanswer_field = "a"\nextractor = "regex"\npattern = "("\n', "not a valid regex"),
        ('name = "x"\ndata = "data.jsonl"\nprompt = "{0}"\nanswer_field = "a"\n', "not a valid str.format template"),
        ('name = "gsm8k"\ndata = "data.jsonl"\nprompt = "{q}"\nanswer_field = "a"\n', "clashes with the built-in task"),
        ('name = = "x"\n', "not valid TOML"),
    ],
)
def test_bad_templates_name_the_file(tmp_path, body, pattern):
    path = template(tmp_path, body)
    with pytest.raises(UserError, match=pattern) as err:
        load_plugins([str(path)])
    assert str(path) in str(err.value)


def test_template_data_errors_are_clear(tmp_path, monkeypatch):
    missing = load_task_template(template(tmp_path, 'name = "tm"\ndata = "gone.jsonl"\nprompt = "{q}"\nanswer_field = "a"\n'))
    with pytest.raises(DataError, match="gone.jsonl is missing"):
        missing(TaskOptions()).samples()
    field = load_task_template(template(tmp_path, 'name = "tf"\ndata = "data.jsonl"\nprompt = "{q}"\nanswer_field = "a"\n',
                                        [{"q": "x"}], name="f.toml"))  # fmt: skip
    with pytest.raises(DataError, match=r"data.jsonl:1: record lacks field\(s\) a"):
        field(TaskOptions()).samples()
    hub = load_task_template(template(tmp_path, 'name = "th"\nhf_dataset = "gsm8k"\nprompt = "{q}"\nanswer_field = "a"\n',
                                      name="h.toml"))  # fmt: skip
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(DataError, match="needs the `datasets` package"):
        hub(TaskOptions()).samples()


def test_prompts_helper_is_shared_with_the_battery():
    """The battery's random prompts are the tests' prompts (same generator, same lengths)."""
    from cllm_bench.conformance import battery_prompts

    assert battery_prompts()[1:] == prompts(3, seed=0)


def test_check_decoder_checks_the_batched_path(tmp_path):
    """A decoder whose single path is ar's but whose batch path swaps rows fails only
    'batched = single', naming the batch and the row."""
    source = """
        from dataclasses import dataclass
        from cllm_bench.decoders.ar import ARDecoder
        from cllm_bench import register_decoder

        @register_decoder("swapped_batch")
        @dataclass
        class Swapped(ARDecoder):
            def generate_batch(self, engine, prompts, max_new_tokens, eos_ids):
                return super().generate_batch(engine, prompts[::-1], max_new_tokens, eos_ids)  # rows reversed
    """
    load_plugins([str(write(tmp_path / "swapped_batch.py", source))])
    out = console()
    assert check_decoder("swapped_batch", out) is False
    text = out.file.getvalue()
    assert re.search(r"batched = single\s+│ FAIL", text), text
    assert re.search(r"same tokens as ar\s+│ pass", text), text
    assert "batch of 4" in text and "row 0" in text
