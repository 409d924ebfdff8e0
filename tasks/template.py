"""Tasks declared in a TOML (or YAML) file instead of Python: ``load_task_template(path)``.

A template names its data, how to build a prompt from a record, and how to score an
answer; ``--include my_task.toml`` (or :func:`load_task_template`) registers it as a task
like any other. Keys (flat, one file = one task)::

    name = "arith"                       # required: the task name
    description = "..."                  # shown by `cllm-bench list`
    data = "arith.jsonl"                 # JSONL file (.gz allowed), relative to this file
    # or, online:  hf_dataset = "gsm8k"  hf_config = "main"  hf_split = "test"  (needs `datasets`)
    id_field = "id"                      # optional: stable sample ids (default: line index)
    prompt = "What is {a} + {b}?"        # required: str.format over the record's fields ({{ }} for braces)
    system = ""                          # optional system message (chat style only)
    style = "auto"                       # chat | raw | auto (chat when the tokenizer has a template)
    answer_field = "answer"              # required: the gold answer (or gold SQL for sql_execution)
    extractor = "last_number"            # text | regex | last_number | code_block | sql_block
    pattern = 'answer is (\\d+)'         # extractor = "regex": group 1 of the last match (whole match without groups)
    scorer = "numeric_match"             # exact_match | numeric_match | code_execution | sql_execution
    ignore_case = false                  # exact_match only
    test_field = "test"                  # code_execution: record field with test code appended to the program
    db_field = "db_path"                 # sql_execution: record field with a sqlite path (relative: to this file)
    timeout_s = 10.0                     # code/SQL execution limit per sample
    stop = ["\\n\\nQuestion:"]           # cut the completion at these strings before scoring
    default_max_new_tokens = 256

``--prompt-style chat|raw`` overrides ``style``. ``code_execution`` and ``sql_execution``
run only with ``--allow-code-execution`` (sandboxed: :func:`cllm_bench.sandbox.run_python`,
:func:`cllm_bench.sql_sandbox.query_sqlite_readonly`); without it ``accuracy`` is None.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from cllm_bench.errors import DataError, UserError
from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import Sample, Task, encode_chat, encode_raw
from cllm_bench.tasks.data_files import cut_at_first, fenced_blocks, read_jsonl

STYLES = ("auto", "chat", "raw")
EXTRACTORS = ("text", "regex", "last_number", "code_block", "sql_block")
SCORERS = ("exact_match", "numeric_match", "code_execution", "sql_execution")
EXECUTING_SCORERS = ("code_execution", "sql_execution")
CODE_LANGS = frozenset({"", "python", "py", "python3"})


@dataclass(frozen=True)
class TemplateSpec:
    """A parsed, validated task template (the keys of the module docstring)."""

    path: Path
    name: str
    prompt: str
    answer_field: str
    description: str = ""
    data: str = ""
    hf_dataset: str = ""
    hf_config: str = ""
    hf_split: str = "test"
    id_field: str = ""
    system: str = ""
    style: str = "auto"
    extractor: str = "text"
    pattern: str = ""
    scorer: str = "exact_match"
    ignore_case: bool = False
    test_field: str = "test"
    db_field: str = "db_path"
    timeout_s: float = 10.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    default_max_new_tokens: int = 256

    @property
    def where(self) -> str:
        return f"task template {self.path}"

    def prompt_fields(self) -> tuple[str, ...]:
        """Record fields the prompt template reads ("a" for "{a}", "x" for "{x[0]}")."""
        names = []
        for _, name, _, _ in string.Formatter().parse(self.prompt + self.system):
            if name:
                names.append(re.split(r"[.\[]", name, maxsplit=1)[0])
        return tuple(dict.fromkeys(names))

    def required_fields(self) -> tuple[str, ...]:
        extra = {"code_execution": (self.test_field,), "sql_execution": (self.db_field,)}.get(self.scorer, ())
        ids = (self.id_field,) if self.id_field else ()
        return tuple(dict.fromkeys((*self.prompt_fields(), self.answer_field, *extra, *ids)))


# ------------------------------------------------------------------ reading the file
def read_template_file(path: Path) -> dict[str, Any]:
    """The raw key/value table of a ``.toml`` / ``.yaml`` / ``.yml`` template."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"task template {path} cannot be read: {err}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise UserError(f"task template {path}: YAML needs PyYAML (pip install pyyaml), or write it as TOML") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"task template {path} is not valid YAML: {err}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"task template {path} is not valid TOML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"task template {path} must hold a table of keys (name, data, prompt, ...)")
    return raw


_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "prompt": str, "answer_field": str, "description": str, "data": str, "hf_dataset": str,
    "hf_config": str, "hf_split": str, "id_field": str, "system": str, "style": str, "extractor": str,
    "pattern": str, "scorer": str, "ignore_case": bool, "test_field": str, "db_field": str,
    "timeout_s": (int, float), "stop": list, "default_max_new_tokens": int,
}  # fmt: skip


def parse_template(raw: dict[str, Any], path: Path) -> TemplateSpec:
    """Validate ``raw`` (keys, types, choices, regex, data source); UserError names the file and key."""
    where = f"task template {path}"
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_TYPES)}")
    for key in ("name", "prompt", "answer_field"):
        if not raw.get(key):
            raise UserError(f"{where}: the key {key!r} is required")
    for key, value in raw.items():
        expected = _TYPES[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise UserError(f"{where}: {key} must be a {names}, got {value!r}")
    values = dict(raw)
    if "stop" in values:
        if not all(isinstance(s, str) and s for s in values["stop"]):
            raise UserError(f"{where}: stop must be a list of non-empty strings")
        values["stop"] = tuple(values["stop"])
    spec = TemplateSpec(path=path, **values)
    _check_choices(spec, where)
    return spec


def _check_choices(spec: TemplateSpec, where: str) -> None:
    for key, choices in (("style", STYLES), ("extractor", EXTRACTORS), ("scorer", SCORERS)):
        if getattr(spec, key) not in choices:
            raise UserError(f"{where}: {key} = {getattr(spec, key)!r}; choose one of: {', '.join(choices)}")
    if bool(spec.data) == bool(spec.hf_dataset):
        raise UserError(f"{where}: give exactly one data source: data = \"file.jsonl\" (local) or hf_dataset = \"...\"")
    if spec.extractor == "regex":
        if not spec.pattern:
            raise UserError(f"{where}: extractor = \"regex\" needs pattern = '...(group)...'")
        try:
            re.compile(spec.pattern)
        except re.error as err:
            raise UserError(f"{where}: pattern {spec.pattern!r} is not a valid regex: {err}") from None
    try:
        spec.prompt.format_map(_AnyFields())
    except (ValueError, IndexError) as err:
        raise UserError(f"{where}: prompt is not a valid str.format template ({err}); write literal braces as {{{{ }}}}") from None
    if spec.default_max_new_tokens < 1 or spec.timeout_s <= 0:
        raise UserError(f"{where}: default_max_new_tokens and timeout_s must be positive")


class _AnyFields(dict):
    """A format mapping that accepts every field name (syntax check of a template)."""

    def __missing__(self, key: str) -> Any:
        return _Anything()


class _Anything:
    def __getattr__(self, name: str) -> "_Anything":
        return self

    def __getitem__(self, key: Any) -> "_Anything":
        return self

    def __format__(self, spec: str) -> str:
        return ""


# ------------------------------------------------------------------ answers (pure)
def extract(spec: TemplateSpec, completion: str) -> str | None:
    """The answer in ``completion`` per ``spec.extractor`` (None when there is none)."""
    text = cut_at_first(completion, spec.stop) if spec.stop else completion
    return EXTRACT[spec.extractor](spec, text)


def _regex(spec: TemplateSpec, text: str) -> str | None:
    matches = list(re.finditer(spec.pattern, text))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if last.re.groups else last.group(0)).strip()


def _last_number(spec: TemplateSpec, text: str) -> str | None:
    from cllm_bench.tasks.gsm8k import extract_flexible

    return extract_flexible(text)


def _code_block(spec: TemplateSpec, text: str) -> str | None:
    blocks = fenced_blocks(text, CODE_LANGS)
    return blocks[0] if blocks else text


def _sql_block(spec: TemplateSpec, text: str) -> str | None:
    from cllm_bench.tasks.spider import extract_sql

    return extract_sql(text) or None


EXTRACT: dict[str, Callable[[TemplateSpec, str], str | None]] = {
    "text": lambda spec, text: text.strip(),
    "regex": _regex,
    "last_number": _last_number,
    "code_block": _code_block,
    "sql_block": _sql_block,
}


def numbers_equal(pred: str, gold: str) -> bool:
    """Normalised numbers equal as strings, or as floats within 1e-6 relative."""
    from cllm_bench.tasks.gsm8k import normalize_number

    p, g = normalize_number(pred), normalize_number(gold.split("####")[-1])
    if p == g:
        return True
    try:
        return abs(float(p) - float(g)) <= 1e-6 * max(1.0, abs(float(g)))
    except ValueError:
        return False


# ------------------------------------------------------------------ the task class
class TemplateTask(Task):
    """A task defined by a :class:`TemplateSpec` (one subclass per template file)."""

    spec: ClassVar[TemplateSpec]
    #: the template file: where the registry says this task comes from
    plugin_source: ClassVar[str] = ""

    def samples(self, limit: int | None = None) -> list[Sample]:
        spec = self.spec
        records = self._records(limit)
        out, seen = [], set()
        for i, record in enumerate(records):
            sid = f"{spec.name}/{record[spec.id_field]}" if spec.id_field else f"{spec.name}/{i}"
            if sid in seen:
                raise DataError(f"{spec.where}: duplicate {spec.id_field} {record[spec.id_field]!r}; ids must be unique")
            seen.add(sid)
            out.append(Sample(id=sid, data=dict(record)))
        return out

    def _records(self, limit: int | None) -> list[dict[str, Any]]:
        spec = self.spec
        if spec.hf_dataset:
            records = _hub_records(spec, limit)
            for i, record in enumerate(records):
                missing = [f for f in spec.required_fields() if f not in record]
                if missing:
                    raise DataError(f"{spec.hf_dataset} record {i} lacks field(s) {', '.join(missing)} ({spec.where})")
            return records
        path = Path(spec.data).expanduser()
        path = path if path.is_absolute() else spec.path.parent / path
        if not path.is_file():
            raise DataError(f"{spec.where}: data file {path} is missing; data = paths are relative to the template")
        records = read_jsonl(path, required=spec.required_fields())
        return records if limit is None else records[:limit]

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        spec = self.spec
        try:
            text = spec.prompt.format(**sample.data)
            system = spec.system.format(**sample.data)
        except (KeyError, IndexError, AttributeError) as err:
            raise DataError(f"{spec.where}: sample {sample.id} cannot fill the prompt template ({err!r})") from None
        if self._chat(tokenizer):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            return encode_chat(tokenizer, messages)
        return encode_raw(tokenizer, f"{system}\n\n{text}" if system else text)

    def _chat(self, tokenizer: Any) -> bool:
        style = self.options.prompt_style if self.options.prompt_style != "auto" else self.spec.style
        if style == "auto":
            return getattr(tokenizer, "chat_template", None) is not None
        return style == "chat"

    def stop_strings(self, sample: Sample) -> list[str]:
        return list(self.spec.stop)

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        spec = self.spec
        pred = extract(spec, completions[0] if completions else "")
        gold = str(sample.data[spec.answer_field])
        if spec.scorer in EXECUTING_SCORERS and not self.options.allow_code_execution:
            return {"correct": None, "pred": pred, "reason": "execution disabled (pass --allow-code-execution)"}
        if pred is None:
            return {"correct": False, "pred": None, "gold": gold, "reason": "no answer found"}
        if spec.scorer == "exact_match":
            same = pred.lower() == gold.strip().lower() if spec.ignore_case else pred == gold.strip()
            return {"correct": same, "pred": pred, "gold": gold}
        if spec.scorer == "numeric_match":
            return {"correct": numbers_equal(pred, gold), "pred": pred, "gold": gold}
        if spec.scorer == "code_execution":
            return self._run_code(sample, pred)
        return self._run_sql(sample, pred, gold)

    def _run_code(self, sample: Sample, code: str) -> dict[str, Any]:
        from cllm_bench.sandbox import run_python

        program = f"{code}\n\n{sample.data[self.spec.test_field]}\n"
        result = run_python(program, timeout_s=self.spec.timeout_s)
        return {"correct": result.passed, "reason": result.reason, "program": program}

    def _run_sql(self, sample: Sample, sql: str, gold: str) -> dict[str, Any]:
        from cllm_bench.sql_sandbox import QueryError, query_sqlite_readonly
        from cllm_bench.tasks.sql_compare import has_top_level_order_by, results_match

        db = Path(str(sample.data[self.spec.db_field])).expanduser()
        db = db if db.is_absolute() else self.spec.path.parent / db
        try:
            gold_rows = query_sqlite_readonly(db, gold, timeout_s=self.spec.timeout_s)
        except QueryError as err:
            return {"correct": None, "pred": sql, "reason": f"gold query failed: {err}"}
        try:
            rows = query_sqlite_readonly(db, sql, timeout_s=self.spec.timeout_s)
        except QueryError as err:
            return {"correct": False, "pred": sql, "reason": str(err)}
        return {"correct": results_match(rows, gold_rows, ordered=has_top_level_order_by(gold)), "pred": sql}

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        judged = [s["correct"] for s in scores if s.get("correct") is not None]
        out: dict[str, Any] = {"accuracy": None, "n": n, "correct": sum(bool(c) for c in judged)}
        if n and len(judged) == n:
            out["accuracy"] = out["correct"] / n
        elif n:
            reason = next(s.get("reason", "") for s in scores if s.get("correct") is None)
            out["note"] = f"accuracy not computed: {n - len(judged)} of {n} samples not scored ({reason})"
        return out


def _hub_records(spec: TemplateSpec, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"{spec.where}: hf_dataset = {spec.hf_dataset!r} needs the `datasets` package (pip install datasets); "
            f"or point data = at a local JSONL file"
        ) from None
    try:
        rows = datasets.load_dataset(spec.hf_dataset, spec.hf_config or None, split=spec.hf_split)
    except Exception as err:  # offline, unknown dataset, hub error: one message naming the fix
        raise DataError(
            f"{spec.where}: loading {spec.hf_dataset!r} from the Hugging Face hub failed ({err}); go online or "
            f"point data = at a local JSONL file"
        ) from None
    records = [dict(r) for r in rows]
    return records if limit is None else records[:limit]


# ------------------------------------------------------------------ registration
def load_task_template(path: str | Path) -> type[Task]:
    """Parse the template at ``path`` and register its task (idempotent for one file).

    Returns the registered class. UserError (naming the file) for a missing or malformed
    template or a name clash with a built-in or another plugin's task.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise UserError(f"task template {resolved} does not exist; check the path given to --include")
    for cls in TASKS.snapshot()[0].values():
        if getattr(cls, "plugin_source", None) == str(resolved):
            return cls
    spec = parse_template(read_template_file(resolved), resolved)
    class_name = "TemplateTask_" + re.sub(r"\W", "_", spec.name)
    cls = type(class_name, (TemplateTask,), {
        "__module__": __name__, "__qualname__": class_name, "__doc__": spec.description or f"Task from {resolved}",
        "spec": spec, "plugin_source": str(resolved), "description": spec.description or f"task template {resolved.name}",
        "requires_execution": spec.scorer in EXECUTING_SCORERS, "default_max_new_tokens": spec.default_max_new_tokens,
    })  # fmt: skip
    return TASKS.register(spec.name, origin=str(resolved))(cls)
