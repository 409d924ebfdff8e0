"""Spider: skipping missing databases, prompts, SQL extraction, read-only execution
accuracy and sqlglot exact-set match."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeTokenizer, decode

from cllm_bench.errors import DataError, UserError
from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import TaskOptions
from cllm_bench.tasks.spider import (
    EXECUTION_DISABLED_NOTE,
    Spider,
    SqlParseError,
    extract_sql,
    first_statement,
    has_top_level_order_by,
    remove_distinct,
    results_match,
    sql_signature,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "spider" / "dev.json").is_file(), reason=f"shared data not found at {SHARED_DATA}"
)


def make_spider(root: Path) -> Path:
    """A two-database Spider layout; the examples of db "gone" have no database file."""
    db_dir = root / "spider" / "database" / "pets"
    db_dir.mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "pets.sqlite")
    conn.execute('CREATE TABLE "pet" ("id" int, "name" text, "age" int, "weight" real, PRIMARY KEY ("id"))')
    conn.execute('CREATE TABLE "owner" ("owner_id" int, "pet_id" int, "city" text)')
    conn.executemany("INSERT INTO pet VALUES (?, ?, ?, ?)", [(1, "Rex", 3, 10.5), (2, "Tom", 5, 4.25), (3, "Kit", 1, 2.0)])
    conn.executemany("INSERT INTO owner VALUES (?, ?, ?)", [(10, 1, "Paris"), (11, 2, "Rome"), (12, 3, "Paris")])
    conn.commit()
    conn.close()
    examples = [
        {"db_id": "pets", "question": "How many pets are there?", "query": "SELECT count(*) FROM pet"},
        {"db_id": "gone", "question": "Lost?", "query": "SELECT 1"},
        {"db_id": "pets", "question": "Names by age.", "query": "SELECT name FROM pet ORDER BY age"},
        {"db_id": "gone", "question": "Lost again?", "query": "SELECT 2"},
        {"db_id": "pets", "question": "Names and ages of pets in Paris.",
         "query": 'SELECT T1.name, T1.age FROM pet AS T1 JOIN owner AS T2 ON T1.id = T2.pet_id WHERE T2.city = "Paris"'},
    ]
    (root / "spider" / "dev.json").write_text(json.dumps(examples))
    return root


@pytest.fixture()
def task(tmp_path) -> Spider:
    return Spider(TaskOptions(data_dir=make_spider(tmp_path), allow_code_execution=True, extra={"query_timeout_s": "1"}))


def test_registered_with_class_attributes():
    assert TASKS.get("spider") is Spider
    assert Spider.requires_execution is True
    assert Spider.default_max_new_tokens == 128
    assert Spider(TaskOptions()).skipped == {}  # always present


def test_missing_databases_are_skipped_and_counted(task):
    samples = task.samples()
    assert [s.id for s in samples] == ["spider/dev/0", "spider/dev/2", "spider/dev/4"]
    assert task.skipped == {"missing_database:gone": 2}
    assert [s.id for s in task.samples(limit=1)] == ["spider/dev/0"]
    metrics = task.aggregate([task.score(s, [s.data["query"]]) for s in samples])
    assert metrics["n"] == 3 and metrics["accuracy"] == 1.0
    assert metrics["skipped"] == {"missing_database:gone": 2}


def test_missing_dev_file_and_missing_all_databases(tmp_path):
    with pytest.raises(DataError, match=r"spider/dev\.json"):
        Spider(TaskOptions(data_dir=tmp_path)).samples()
    (tmp_path / "spider").mkdir()
    (tmp_path / "spider" / "dev.json").write_text(json.dumps([{"db_id": "x", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(DataError, match=r"database/x/x\.sqlite"):
        Spider(TaskOptions(data_dir=tmp_path)).samples()
    (tmp_path / "spider" / "dev.json").write_text("[{\"db_id\": \n")
    with pytest.raises(DataError, match=r"dev\.json:\d+"):
        Spider(TaskOptions(data_dir=tmp_path)).samples()


def test_score_right_wrong_and_reordered_columns(task):
    sample = task.samples()[2]  # names and ages of pets in Paris
    assert task.score(sample, ["SELECT name, age FROM pet WHERE id IN (1, 3)"])["execution_match"] is True
    swapped = task.score(sample, ["SELECT age, name FROM pet WHERE id IN (1, 3)"])
    assert swapped["execution_match"] is True  # same columns in another order
    assert swapped["exact_set_match"] is False
    wrong = task.score(sample, ["SELECT name, age FROM pet"])
    assert wrong["execution_match"] is False and wrong["error"] is None
    unknown = task.score(sample, ["SELECT colour FROM pet"])
    assert unknown["execution_match"] is False and "no such column" in unknown["error"]


def test_ordered_gold_compares_order(task):
    sample = task.samples()[1]  # ORDER BY age: Kit, Rex, Tom
    assert task.score(sample, ["SELECT name FROM pet ORDER BY age ASC"])["execution_match"] is True
    assert task.score(sample, ["SELECT name FROM pet ORDER BY age DESC"])["execution_match"] is False
    unordered_gold = task.samples()[0]
    assert task.score(unordered_gold, ["SELECT count(id) FROM pet"])["execution_match"] is True


def test_deleting_query_fails_cleanly_and_database_is_untouched(task):
    sample = task.samples()[0]
    db = Path(sample.data["db_path"])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    score = task.score(sample, ["DELETE FROM pet"])
    assert score["execution_match"] is False and score["error"]
    assert task.score(sample, ["DROP TABLE pet"])["execution_match"] is False
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert task.score(sample, [sample.data["query"]])["execution_match"] is True


def test_endless_query_fails_within_the_time_limit(task):
    sample = task.samples()[0]
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    score = task.score(sample, [endless])
    assert time.monotonic() - start < 1.0 + 3.0
    assert score["execution_match"] is False and "timeout" in score["error"]


def test_non_sql_fails_cleanly_with_parse_error(task):
    sample = task.samples()[0]
    for completion in ["I do not know the answer.", "", "SELECT name FROM pet WHERE"]:
        score = task.score(sample, [completion])
        assert score["execution_match"] is False
        assert score["exact_set_match"] is False
        assert score["parse_error"] is True
    metrics = task.aggregate([task.score(sample, ["nonsense"]), task.score(sample, [sample.data["query"]])])
    assert metrics["parse_errors"] == 1 and metrics["accuracy"] == 0.5


def test_without_opt_in_no_execution_but_exact_match(tmp_path):
    task = Spider(TaskOptions(data_dir=make_spider(tmp_path)))
    sample = task.samples()[0]
    score = task.score(sample, ["select COUNT(*) from PET"])
    assert score["execution_match"] is None and score["exact_set_match"] is True
    metrics = task.aggregate([score])
    assert metrics["accuracy"] is None and metrics["note"] == EXECUTION_DISABLED_NOTE
    assert metrics["exact_set_match"] == 1.0


# --- DISTINCT (official rule: removed before executing) ---------------------------------

def _distinct_task(root: Path, **extra: str) -> Spider:
    return Spider(TaskOptions(data_dir=root, allow_code_execution=True, extra={"query_timeout_s": "2", **extra}))


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("SELECT count(DISTINCT city) FROM owner", "SELECT count(city) FROM owner"),  # 2 vs 3
        ("SELECT DISTINCT city FROM owner", "SELECT city FROM owner"),  # Paris once vs twice
        ("SELECT city FROM owner", "SELECT DISTINCT city FROM owner"),
    ],
)
def test_distinct_is_removed_by_default_and_kept_on_request(tmp_path, gold, pred):
    root = make_spider(tmp_path)
    official = _distinct_task(root)
    sample = official.samples()[0]
    sample.data["query"] = gold
    assert official.keep_distinct is False
    assert official.score(sample, [pred])["execution_match"] is True
    kept = _distinct_task(root, keep_distinct="true")
    assert kept.keep_distinct is True
    assert kept.score(sample, [pred])["execution_match"] is False
    assert kept.score(sample, [gold])["execution_match"] is True


def test_bad_keep_distinct_value_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="keep_distinct"):
        Spider(TaskOptions(data_dir=tmp_path, extra={"keep_distinct": "maybe"}))


def test_remove_distinct_drops_the_keyword_only():
    assert remove_distinct("SELECT DISTINCT name FROM pet") == "SELECT  name FROM pet"
    assert remove_distinct("select count(distinct T1.city) from owner as T1") == "select count( T1.city) from owner as T1"
    assert remove_distinct("SELECT a FROM t WHERE b IN (SELECT Distinct b FROM u)") == "SELECT a FROM t WHERE b IN (SELECT  b FROM u)"
    kept = "SELECT 'distinct', \"distinct\", [distinct] FROM t WHERE a IS NOT DISTINCT FROM b -- distinct"
    assert remove_distinct(kept) == kept
    assert remove_distinct("SELECT a FROM t WHERE s = 'it''s distinct' AND x IS DISTINCT FROM y") == (
        "SELECT a FROM t WHERE s = 'it''s distinct' AND x IS DISTINCT FROM y"
    )
    assert remove_distinct("SELECT distinct_count, DISTINCTx FROM t") == "SELECT distinct_count, DISTINCTx FROM t"


# --- bounded, quoted execution -----------------------------------------------------------

@pytest.mark.parametrize(
    "pred",
    [
        "SELECT zeroblob(1000000000)",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT randomblob(100000000) FROM c",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) SELECT length(randomblob(5000000)) FROM c",
    ],
)
def test_expensive_predictions_fail_fast_and_the_next_sample_still_scores(task, pred):
    samples = task.samples()
    start = time.monotonic()
    scores = task.score_batch(samples[:2], [[pred], [samples[1].data["query"]]])
    assert time.monotonic() - start < 2 * 1.0 + 5.0
    assert scores[0]["execution_match"] is False and scores[0]["error"]
    assert scores[1]["execution_match"] is True


@pytest.mark.parametrize("folder", ["data#dir", "100%", "q?mode=rw"])
def test_data_dir_with_uri_characters_executes_the_right_database(tmp_path, folder):
    root = make_spider(tmp_path / folder)
    task = Spider(TaskOptions(data_dir=root, allow_code_execution=True, extra={"schema": "database"}))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    samples = task.samples()
    scores = task.score_batch(samples, [[s.data["query"]] for s in samples])
    assert [s["execution_match"] for s in scores] == [True, True, True]
    assert task.score(samples[0], ["SELECT count(*) FROM owner WHERE city = 'Rome'"])["execution_match"] is False
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no other database created
    prompt = decode(task.prompt_ids(samples[0], FakeTokenizer(chat=False)))
    assert "table named pet with columns ['id', 'name', 'age', 'weight']" in prompt  # the schema was read


# --- pure pieces -----------------------------------------------------------------------

def test_extract_sql():
    assert extract_sql("```sql\nSELECT a FROM t;\n```\nThis selects a.") == "SELECT a FROM t"
    assert extract_sql("SELECT a FROM t;\nSELECT b FROM t;") == "SELECT a FROM t"
    assert extract_sql("SELECT a\nFROM t\n\nExplanation: ...") == "SELECT a\nFROM t"
    assert extract_sql("The query is: SELECT a FROM t") == "SELECT a FROM t"
    assert extract_sql("SELECT a FROM t WHERE b = 'x;y'\n<|EOT|>junk") == "SELECT a FROM t WHERE b = 'x;y'"
    assert first_statement("SELECT \"a;\" FROM t; DROP TABLE t") == 'SELECT "a;" FROM t'
    assert extract_sql("no sql here") == "no sql here"
    assert extract_sql("With this query you get it: SELECT a FROM t") == "SELECT a FROM t"
    assert extract_sql("with x AS (SELECT 1) SELECT * FROM x") == "with x AS (SELECT 1) SELECT * FROM x"


def test_exact_set_match_rules():
    names = frozenset({"pet", "name", "age", "id", "owner", "city", "pet_id"})

    def same(a: str, b: str) -> bool:
        return sql_signature(a, names) == sql_signature(b, names)

    assert same("SELECT T1.name FROM pet AS T1 WHERE T1.age > 3", "select name from PET where age > 3")
    assert same("SELECT name, age FROM pet", "SELECT age, name FROM pet")  # SELECT items as a set
    assert same("SELECT name FROM pet WHERE age > 1 AND id = 2", "SELECT name FROM pet WHERE id = 2 AND age > 1")
    assert same('SELECT name FROM pet WHERE name = "Rex"', "SELECT name FROM pet WHERE name = 'Tom'")  # values ignored
    assert same("SELECT a.name FROM pet a JOIN owner b ON a.id = b.pet_id", "SELECT name FROM owner JOIN pet ON pet_id = id")
    assert not same("SELECT name FROM pet ORDER BY age", "SELECT name FROM pet ORDER BY age DESC")
    assert not same("SELECT name FROM pet", "SELECT DISTINCT name FROM pet")
    assert not same("SELECT name FROM pet WHERE age > 1", "SELECT name FROM pet WHERE age < 1")
    assert not same("SELECT name FROM pet UNION SELECT city FROM owner", "SELECT name FROM pet INTERSECT SELECT city FROM owner")
    with pytest.raises(SqlParseError):
        sql_signature("this is not sql")
    with pytest.raises(SqlParseError):
        sql_signature("DELETE FROM pet")


def test_order_by_detection_and_result_matching():
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a")
    assert not has_top_level_order_by("SELECT a FROM t WHERE a IN (SELECT a FROM u ORDER BY a LIMIT 1)")
    assert has_top_level_order_by("SELECT a FROM t UNION SELECT a FROM u ORDER BY a")
    assert results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=False)
    assert not results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=True)
    assert results_match([(0.1 + 0.2,)], [(0.3,)], ordered=False)  # floats rounded
    assert results_match([(3.0,)], [(3,)], ordered=False)
    assert not results_match([(1,), (1,)], [(1,)], ordered=False)  # multisets, not sets
    assert results_match([("a", 1)], [(1, "a")], ordered=False)  # column order free
    assert not results_match([(1, 1)], [(1,)], ordered=False)
    assert results_match([], [], ordered=False)
    # 8 columns with the same values: a bounded search, not 8! orders per call
    pred = [tuple((i + k) % 8 for k in range(8)) for i in range(8)]
    gold = [tuple((i * 3 + k * 5) % 8 for k in range(8)) for i in range(8)]
    start = time.monotonic()
    assert not results_match(pred, gold, ordered=False)
    assert time.monotonic() - start < 2.0


def test_prompts_use_the_database_schema(task):
    sample = task.samples()[0]
    raw = decode(task.prompt_ids(sample, FakeTokenizer(chat=False)))
    assert raw.startswith("### Instruction:\nCould you translate the following question into SQL. Please only generate SQL")
    assert "The SQL database has table named pet with columns ['id', 'name', 'age', 'weight'], " in raw
    assert "table named owner with columns ['owner_id', 'pet_id', 'city'], Question: How many pets are there?" in raw
    assert raw.endswith("\n### Response:\n")
    chat = decode(task.prompt_ids(sample, FakeTokenizer(chat=True)))
    assert chat.startswith("<|user|>") and 'CREATE TABLE "pet"' in chat and "```sql" in chat
    assert "How many pets are there?" in chat


# --- the real dev set ------------------------------------------------------------------

@needs_shared_data
def test_real_dev_gold_queries_score_perfectly_and_wta_1_is_skipped():
    task = Spider(TaskOptions(data_dir=SHARED_DATA, allow_code_execution=True))
    samples = task.samples()
    assert task.skipped == {"missing_database:wta_1": 62}
    assert len(samples) == 972
    start = time.monotonic()
    scores = task.score_batch(samples, [[s.data["query"]] for s in samples])
    metrics = task.aggregate(scores)
    failed = [(s.id, sc) for s, sc in zip(samples, scores) if not (sc["execution_match"] and sc["exact_set_match"])]
    assert failed == []
    assert metrics["accuracy"] == 1.0 and metrics["exact_set_match"] == 1.0 and metrics["parse_errors"] == 0
    assert metrics["skipped"] == {"missing_database:wta_1": 62} and metrics["n"] == 972
    assert time.monotonic() - start < 60


@needs_shared_data
def test_real_dev_queries_of_other_questions_mostly_fail():
    # dev.json lists most questions twice (paraphrases with the same query), so pair each
    # sample with a different query of the same database
    task = Spider(TaskOptions(data_dir=SHARED_DATA, allow_code_execution=True))
    samples = task.samples()[:300]

    def canon(sql: str) -> str:
        return " ".join(sql.lower().replace('"', "'").split())

    pairs = []
    for i, s in enumerate(samples):
        other = next(
            (o for o in samples[i + 1 :] + samples[:i]
             if o.data["db_id"] == s.data["db_id"] and canon(o.data["query"]) != canon(s.data["query"])),
            None,
        )
        if other is not None:
            pairs.append((s, other.data["query"]))
    assert len(pairs) > 250
    metrics = task.aggregate([task.score(s, [q]) for s, q in pairs])
    assert metrics["exact_set_match"] < 0.1 and metrics["accuracy"] < 0.2
