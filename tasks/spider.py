"""Spider (dev): text-to-SQL on SQLite databases, execution accuracy.

Data: ``<data_dir>/spider/dev.json`` (1034 examples; task argument ``split=train`` reads
``train_spider.json``) with databases ``<data_dir>/spider/database/<db_id>/<db_id>.sqlite``.
Examples whose database file is missing are skipped, never scored as wrong: the count
per reason is in :attr:`Spider.skipped` (``{"missing_database:wta_1": 62}`` for the
shared copy, which lacks wta_1) and in the aggregate under ``skipped``.

Prompts: the schema comes from ``spider/tables.json`` when the data dir has it (task
argument ``schema=auto``, the default; ``schema=tables`` requires it), rendered the same way
for every database, so train and dev prompts share one format; ``schema=database`` reads
the CREATE statements of the .sqlite file itself. The ``train`` split needs no databases
when tables.json has their schemas (the shared copy has no train databases): its samples
are training prompts (see :meth:`Spider.reference_answer`), not scored by execution.
Chat models get the CREATE TABLE
statements and are asked for the SQL alone in a ```sql block; base models get the CLLM
reference format ``### Instruction:\\nCould you translate ... The SQL database has table
named T with columns [...], ... Question: ...\\n### Response:\\n``.

Scoring (per sample):

* ``pred_sql``: the first fenced block, else the first statement of the completion (up
  to ``;`` or a blank line outside quotes), see :func:`extract_sql`;
* ``execution_match`` (the task's ``accuracy``): as the official test-suite evaluator
  (``keep_distinct=False``), every ``DISTINCT`` keyword is first removed from both
  queries (``SELECT DISTINCT``, ``count(DISTINCT x)``, in subqueries too:
  :func:`~cllm_bench.tasks.sql_compare.remove_distinct`); task argument
  ``keep_distinct=true`` keeps them. Gold and predicted
  query then run together in one sandboxed child on the database opened read-only
  (:func:`cllm_bench.sql_sandbox.run_queries`: reads only, OS isolation when available,
  memory cap ``query_memory_mb`` (default 1024), time limit ``query_timeout_s`` per
  query, default 5 s); results compared as multisets of rows, or as lists when the gold
  query has a top-level ORDER BY; floats rounded to 6 decimals; the predicted columns
  may come in another order (as in the official evaluator;
  :func:`~cllm_bench.tasks.sql_compare.results_match`). Only with
  ``TaskOptions.allow_code_execution``, else None;
* ``exact_set_match``: structural comparison of the two queries parsed by sqlglot
  (dialect sqlite, :func:`~cllm_bench.tasks.sql_compare.sql_signature`): keywords and
  identifiers case-folded, table aliases and column qualifiers dropped, literal values ignored (as the official
  Spider exact match does), SELECT items / FROM tables / JOIN-ON, WHERE and HAVING
  conjuncts / GROUP BY compared as sets, ORDER BY as a list, LIMIT by presence;
* ``parse_error``: the prediction is empty or sqlglot cannot parse it as a query.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cllm_bench.errors import DataError
from cllm_bench.registry import register_task
from cllm_bench.sql_sandbox import QueryError, readonly_uri, run_queries
from cllm_bench.tasks.base import Sample, Task, TaskArg, TaskOptions, encode_chat, encode_raw
from cllm_bench.tasks.data_files import (
    choice_option,
    data_file,
    fenced_blocks,
    float_option,
    read_json,
    require_fields,
)
from cllm_bench.tasks.sql_compare import (
    SqlParseError,
    has_top_level_order_by,
    remove_distinct,
    results_match,
    sql_signature,
)

SPLIT_FILES = {"dev": "dev.json", "train": "train_spider.json"}
#: where prompts take the schema from: "tables" = spider/tables.json (one rendering for
#: every database, train and dev alike), "database" = the .sqlite file's own CREATE
#: statements, "auto" = tables.json when the data dir has it
SCHEMA_SOURCES = ("auto", "tables", "database")
EXECUTION_DISABLED_NOTE = (
    "SQL execution disabled: pass --allow-code-execution to compute execution accuracy "
    "(exact_set_match needs no execution)"
)
RAW_INSTRUCTION_PREFIX = (
    "Could you translate the following question into SQL. Please only generate SQL, "
    "don't include explanation in the answer. "
)
CHAT_INSTRUCTION = (
    "Write one SQLite query that answers the question below. Reply with only the SQL "
    "query in a ```sql code block."
)
#: the queries of at most this many samples run in one sandboxed child
SAMPLES_PER_CHILD = 64

_SQL_LANGS = frozenset({"", "sql", "sqlite"})
#: the start of a query: SELECT, or WITH [RECURSIVE] name [(columns)] AS (
_SQL_START = re.compile(r"(SELECT\b|WITH\s+(RECURSIVE\s+)?\w+\s*(\([^)]*\)\s*)?AS\s*\()", re.I)


# --- schema (reads the database, our own trusted queries) -------------------------------

@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[str, ...]
    create_sql: str


def read_schema(db_path: Path) -> tuple[TableSchema, ...]:
    """The user tables of a SQLite database in creation order (``sqlite_*`` excluded)."""
    conn = sqlite3.connect(readonly_uri(db_path), uri=True)  # quoted: "#", "?", "%" in the path
    try:
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        ).fetchall()
        return tuple(
            TableSchema(
                name=name,
                columns=tuple(row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')),
                create_sql=(sql or "").strip(),
            )
            for name, sql in tables
        )
    except sqlite3.Error as err:
        raise DataError(f"spider: cannot read the schema of {db_path} ({err}); re-download the database") from None
    finally:
        conn.close()


def schema_from_tables_json(entry: dict[str, Any]) -> tuple[TableSchema, ...]:
    """The schema of one ``tables.json`` entry, with one compact CREATE TABLE per table.

    Column names and types, primary and foreign keys come from the entry's ``*_original``
    fields; the rendering is the same for every database, train and dev alike (Spider's
    own .sqlite files were written by hand in many styles): one column per line, then
    ``PRIMARY KEY (...)`` and ``FOREIGN KEY (x) REFERENCES t(y)`` lines.
    """
    names = entry.get("table_names_original") or entry.get("table_names") or []
    columns = entry.get("column_names_original") or entry.get("column_names") or []
    types = entry.get("column_types") or ["text"] * len(columns)
    primary = set(entry.get("primary_keys") or [])
    out = []
    for t_index, t_name in enumerate(names):
        lines = [f"  {c_name} {types[c_index]}" for c_index, (owner, c_name) in enumerate(columns) if owner == t_index]
        keys = [columns[c][1] for c in sorted(primary) if columns[c][0] == t_index]
        if keys:
            lines.append(f"  PRIMARY KEY ({', '.join(keys)})")
        for src, dst in entry.get("foreign_keys") or []:
            if columns[src][0] == t_index:
                lines.append(f"  FOREIGN KEY ({columns[src][1]}) REFERENCES {names[columns[dst][0]]}({columns[dst][1]})")
        out.append(TableSchema(
            name=t_name,
            columns=tuple(c for owner, c in columns if owner == t_index),
            create_sql=f"CREATE TABLE {t_name} (\n" + ",\n".join(lines) + "\n)",
        ))
    return tuple(out)


def raw_prompt(schema: tuple[TableSchema, ...], question: str) -> str:
    """The CLLM reference prompt (``build_instruction_prompt`` of the CLLM code)."""
    tables = "".join(f"table named {t.name} with columns {list(t.columns)}, " for t in schema)
    instruction = f"{RAW_INSTRUCTION_PREFIX}The SQL database has {tables}Question: {question}"
    return f"### Instruction:\n{instruction.strip()}\n### Response:\n"


def chat_messages(schema: tuple[TableSchema, ...], question: str) -> list[dict[str, str]]:
    """The user turn for chat models: CREATE TABLE statements, the instruction, the question."""
    ddl = ";\n\n".join(t.create_sql for t in schema) + ";"
    content = f"SQLite database schema:\n\n{ddl}\n\n{CHAT_INSTRUCTION}\n\nQuestion: {question}"
    return [{"role": "user", "content": content}]


# --- SQL extraction (pure) -------------------------------------------------------------

def first_statement(text: str) -> str:
    """``text`` up to the first ``;`` or blank line that is not inside a quoted string."""
    quote: str | None = None
    for i, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char == ";" or (char == "\n" and text[i + 1 : i + 2] == "\n"):
            return text[:i]
    return text


def extract_sql(completion: str) -> str:
    """The SQL query a completion stands for (see the module docstring); may be empty."""
    text = completion.split("<|EOT|>")[0]
    blocks = fenced_blocks(text, _SQL_LANGS)
    if blocks:
        text = blocks[0]
    else:
        text = text.strip()
        if not _SQL_START.match(text):  # skip prose before the query ("The query is: SELECT ...")
            start = re.search(r"\bSELECT\b", text) or re.search(r"\bselect\b", text, re.I)
            if start is not None:
                text = text[start.start() :]
    return first_statement(text.strip()).strip()


# --- execution match ------------------------------------------------------------------

def _match(gold: list[tuple] | QueryError, pred: list[tuple] | QueryError | None, gold_sql: str) -> tuple[bool | None, str | None]:
    """(execution match, error) of one sample from its query results (pred None: empty)."""
    if isinstance(gold, QueryError):
        return None, f"gold query failed: {gold}"
    if pred is None:
        return False, "empty prediction"
    if isinstance(pred, QueryError):
        return False, str(pred)
    return results_match(pred, gold, ordered=has_top_level_order_by(gold_sql)), None


# --- the task --------------------------------------------------------------------------

def database_path(data_dir: Path, db_id: str) -> Path:
    return Path(data_dir) / "spider" / "database" / db_id / f"{db_id}.sqlite"


@register_task("spider")
class Spider(Task):
    """Spider dev execution accuracy, with exact-set match as a second metric.

    ``skipped`` (always present) maps a reason ("missing_database:<db_id>") to the number
    of examples of the split that :meth:`samples` left out, over the whole split
    (independent of ``limit``); empty when none was skipped.
    """

    description = "Spider dev: text-to-SQL on SQLite, execution accuracy (needs --allow-code-execution) + exact-set match"
    requires_execution = True
    default_max_new_tokens = 128
    accepted_args = {
        "split": TaskArg(tuple(SPLIT_FILES)),
        "query_timeout_s": TaskArg("positive", "time limit per SQL query (s)"),
        "keep_distinct": TaskArg(("false", "true")),
        "schema": TaskArg(SCHEMA_SOURCES),
    }

    def __init__(self, options: TaskOptions | None = None) -> None:
        super().__init__(options)
        self.skipped: dict[str, int] = {}
        #: official rule (False): DISTINCT is removed from both queries before executing
        self.keep_distinct = choice_option(self.options.extra, "keep_distinct", "false", ("false", "true"), "spider") == "true"
        self._schemas: dict[str, tuple[TableSchema, ...]] = {}
        self._tables: dict[str, dict[str, Any]] | None = None

    def samples(self, limit: int | None = None) -> list[Sample]:
        split = choice_option(self.options.extra, "split", "dev", tuple(SPLIT_FILES), "spider")
        data_dir = self.options.data_dir
        path = data_file(data_dir, f"spider/{SPLIT_FILES[split]}", "spider")
        records = read_json(path)
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of examples; is this the right file?")
        samples: list[Sample] = []
        skipped: Counter[str] = Counter()
        tables = self.tables_json()
        for i, record in enumerate(records):
            require_fields(record, ("question", "query", "db_id"), f"{path} record {i}")
            db = database_path(data_dir, record["db_id"])
            if split == "train" and tables is not None and record["db_id"] in tables:
                pass  # training prompts: the schema comes from tables.json, no database needed
            elif not db.is_file():
                skipped[f"missing_database:{record['db_id']}"] += 1
                continue
            data = {"question": record["question"], "query": record["query"], "db_id": record["db_id"], "db_path": str(db)}
            samples.append(Sample(id=f"spider/{split}/{i}", data=data))
        self.skipped = dict(sorted(skipped.items()))
        if records and not samples:
            raise DataError(
                f"spider: none of the {len(records)} {split} examples has its database; expected files like "
                f"{database_path(data_dir, records[0]['db_id'])}; pass --data-dir pointing to a folder with "
                "spider/database/<db_id>/<db_id>.sqlite"
            )
        return samples if limit is None else samples[:limit]

    def tables_json(self) -> dict[str, dict[str, Any]] | None:
        """``spider/tables.json`` by db_id when the schema comes from it (task argument
        ``schema=tables``, or ``auto`` and the file exists), else None (read the databases)."""
        if self._tables is not None:
            return self._tables or None
        source = choice_option(self.options.extra, "schema", "auto", SCHEMA_SOURCES, "spider")
        path = None if self.options.data_dir is None else Path(self.options.data_dir) / "spider" / "tables.json"
        if source == "database" or (source == "auto" and (path is None or not path.is_file())):
            self._tables = {}
            return None
        entries = read_json(data_file(self.options.data_dir, "spider/tables.json", "spider"))
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a JSON list of database schemas; is this the right file?")
        self._tables = {e["db_id"]: e for e in entries if isinstance(e, dict) and "db_id" in e}
        return self._tables

    def schema(self, sample: Sample) -> tuple[TableSchema, ...]:
        """The schema of the sample's database (read once per database and task object):
        from ``tables.json`` (see :meth:`tables_json`) or the database file itself."""
        db_id = sample.data["db_id"]
        if db_id not in self._schemas:
            tables = self.tables_json()
            if tables is not None and db_id in tables:
                self._schemas[db_id] = schema_from_tables_json(tables[db_id])
            else:
                self._schemas[db_id] = read_schema(Path(sample.data["db_path"]))
        return self._schemas[db_id]

    def reference_answer(self, sample: Sample, tokenizer: Any) -> str:
        """The gold answer in the form the prompt asks for (a ```sql block for chat
        prompts, the bare query for the reference's raw prompt): training targets."""
        query = sample.data["query"]
        return f"```sql\n{query}\n```" if self.use_chat(tokenizer) else query

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        schema, question = self.schema(sample), sample.data["question"]
        if self.use_chat(tokenizer):
            return encode_chat(tokenizer, chat_messages(schema, question))
        return encode_raw(tokenizer, raw_prompt(schema, question))

    def stop_strings(self, sample: Sample) -> list[str]:
        stops = ["<|EOT|>", "\n### "]
        return stops + ["\n\n"] if self.options.prompt_style == "raw" else stops

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        return self.score_batch([sample], [completions])[0]

    def score_batch(self, samples: list[Sample], completions: list[list[str]]) -> list[dict[str, Any]]:
        """:meth:`score` for many samples; the queries of up to :data:`SAMPLES_PER_CHILD`
        samples on one database run in one sandboxed child."""
        preds = [extract_sql(c[0] if c else "") for c in completions]
        results = [self._static_score(s, p) for s, p in zip(samples, preds, strict=True)]
        if self.options.allow_code_execution:
            for result, (match, error) in zip(results, self._execution_matches(samples, preds)):
                result["execution_match"], result["error"] = match, error
        return results

    def _static_score(self, sample: Sample, pred: str) -> dict[str, Any]:
        """The score without execution: exact-set match and parse error."""
        gold = sample.data["query"]
        known = frozenset(n.lower() for t in self.schema(sample) for n in (t.name, *t.columns))
        try:
            exact = sql_signature(pred, known) == sql_signature(gold, known)
            parse_error = False
        except SqlParseError:
            exact, parse_error = False, True
        return {"execution_match": None, "exact_set_match": exact, "parse_error": parse_error, "error": None,
                "pred_sql": pred}  # fmt: skip

    def _execution_matches(self, samples: list[Sample], preds: list[str]) -> list[tuple[bool | None, str | None]]:
        """(match, error) per sample: match None only when the gold query itself fails.
        Both queries lose their DISTINCT first unless ``keep_distinct``."""
        extra = self.options.extra
        timeout = float_option(extra, "query_timeout_s", 5.0, "spider")
        memory_mb = int(float_option(extra, "query_memory_mb", 1024, "spider"))
        prepare = (lambda sql: sql) if self.keep_distinct else remove_distinct
        by_db: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            by_db.setdefault(sample.data["db_path"], []).append(i)
        out: list[tuple[bool | None, str | None]] = [(None, None)] * len(samples)
        for db, indices in by_db.items():
            for start in range(0, len(indices), SAMPLES_PER_CHILD):
                chunk = indices[start : start + SAMPLES_PER_CHILD]
                queries = [prepare(q) for i in chunk for q in [samples[i].data["query"], *([preds[i]] if preds[i] else [])]]
                try:
                    rows = iter(run_queries(db, queries, timeout, memory_mb=memory_mb))
                except QueryError as err:  # the database file is gone
                    rows = iter([err] * len(queries))
                for i in chunk:
                    gold_rows = next(rows)
                    pred_rows = next(rows) if preds[i] else None
                    out[i] = _match(gold_rows, pred_rows, samples[i].data["query"])
        return out

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        out: dict[str, Any] = {
            "accuracy": None,
            "exact_set_match": sum(bool(s["exact_set_match"]) for s in scores) / n if n else None,
            "parse_errors": sum(bool(s["parse_error"]) for s in scores),
            "n": n,
            "skipped": dict(self.skipped),
        }
        matches = [s["execution_match"] for s in scores]
        if any(m is None for m in matches):
            if not self.options.allow_code_execution:
                out["note"] = EXECUTION_DISABLED_NOTE
            else:
                out["note"] = f"{sum(m is None for m in matches)} gold queries failed to run; accuracy not computed"
            return out
        out["accuracy"] = sum(bool(m) for m in matches) / n if n else None
        out["execution_errors"] = sum(s.get("error") is not None for s in scores)
        return out
