"""How Spider compares a predicted SQL query with the gold one (pure functions, no I/O):

* exact-set match (:func:`sql_signature`): both queries parsed by sqlglot (dialect
  sqlite) into a structure where keywords and identifiers are case-folded, table aliases
  and column qualifiers dropped, literal values ignored (as the official Spider exact
  match does), SELECT items / FROM tables / JOIN-ON, WHERE and HAVING conjuncts / GROUP
  BY are sets, ORDER BY a list, LIMIT a presence flag;
* execution results (:func:`results_match`): multisets of rows, or lists when the gold
  query has a top-level ORDER BY (:func:`has_top_level_order_by`); floats rounded to
  :data:`FLOAT_DECIMALS` decimals; the predicted columns may come in another order;
* :func:`remove_distinct`: the official test-suite evaluator's ``keep_distinct=False``
  rule, applied to both queries before they run.

Used by the ``spider`` task (:mod:`cllm_bench.tasks.spider`) and the ``sql_execution``
scorer of task templates (:mod:`cllm_bench.tasks.template`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Any, Callable, Iterator

import sqlglot
from sqlglot import exp

#: float results are compared after rounding to this many decimals
FLOAT_DECIMALS = 6
#: results this wide or narrower may match with their columns in another order...
MAX_PERMUTED_COLUMNS = 8
#: ...trying at most this many column orders
MAX_COLUMN_ORDERS = 1000


# --- exact set match (pure) ------------------------------------------------------------

class SqlParseError(ValueError):
    """The text is not a single SQL query sqlglot can parse."""


def _normalize_node(known_names: frozenset[str]) -> Callable[[exp.Expression], exp.Expression]:
    """The sqlglot transform behind :func:`sql_signature` (values, qualifiers, aliases, case)."""
    def normalize(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal):
            return exp.Placeholder()
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                return exp.Star()
            ident = node.this
            # SQLite reads an unknown double-quoted name as a string: a value, not a column
            if isinstance(ident, exp.Identifier) and ident.quoted and not node.table and ident.name.lower() not in known_names:
                return exp.Placeholder()
            return exp.column(node.name.lower())
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            return exp.table_(node.name.lower())
        if isinstance(node, exp.Identifier):
            return exp.to_identifier(node.name.lower())
        return node

    return normalize


def _text(node: exp.Expression | None) -> str:
    return "" if node is None else node.sql(dialect="sqlite")


def _conjuncts(condition: exp.Expression | None) -> frozenset[str]:
    if condition is None:
        return frozenset()
    parts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    out = set()
    for part in parts:
        if isinstance(part, exp.EQ):  # a = b equals b = a
            out.add(" = ".join(sorted((_text(part.this), _text(part.expression)))))
        else:
            out.add(_text(part))
    return frozenset(out)


def _signature(node: exp.Expression) -> Any:
    if isinstance(node, exp.Subquery):
        return _signature(node.this)
    if isinstance(node, (exp.Union, exp.Intersect, exp.Except)):
        return (
            type(node).__name__,
            bool(node.args.get("distinct")),
            _signature(node.this),
            _signature(node.expression),
            _order(node),
            node.args.get("limit") is not None,
        )
    if not isinstance(node, exp.Select):
        return _text(node)
    source = node.args.get("from_") or node.args.get("from")
    joins = node.args.get("joins") or []
    sources = ([source.this] if source is not None else []) + [j.this for j in joins]
    return (
        "SELECT",
        bool(node.args.get("distinct")),
        frozenset(_text(e.unalias()) for e in node.expressions),
        frozenset(_signature(s) if isinstance(s, exp.Subquery) else _text(s) for s in sources),
        frozenset().union(*(_conjuncts(j.args.get("on")) for j in joins)),
        _conjuncts(node.args["where"].this if node.args.get("where") else None),
        frozenset(_text(e) for e in (node.args["group"].expressions if node.args.get("group") else [])),
        _conjuncts(node.args["having"].this if node.args.get("having") else None),
        _order(node),
        node.args.get("limit") is not None,
    )


def _order(node: exp.Expression) -> tuple[str, ...]:
    order = node.args.get("order")
    if order is None:
        return ()
    return tuple(f"{_text(o.this)} {'DESC' if o.args.get('desc') else 'ASC'}" for o in order.expressions)


def parse_query(sql: str) -> exp.Expression:
    """The sqlglot tree of one SQLite query; SqlParseError when it is not one."""
    if not sql.strip():
        raise SqlParseError("empty query")
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as err:
        raise SqlParseError(str(err).split("\n")[0]) from None
    if not isinstance(tree, exp.Query) or (isinstance(tree, exp.Select) and not tree.expressions):
        raise SqlParseError(f"not a query: {sql[:80]!r}")
    return tree


def sql_signature(sql: str, known_names: frozenset[str] = frozenset()) -> Any:
    """A hashable structure equal for queries that match under the exact-set rules of the
    module docstring. ``known_names``: lower-case table and column names of the schema
    (a double-quoted unknown name is a string value). Raises SqlParseError."""
    tree = parse_query(sql).transform(_normalize_node(known_names))
    return _signature(tree)


def has_top_level_order_by(sql: str) -> bool:
    """True when the query's outermost statement sorts its result."""
    try:
        return parse_query(sql).args.get("order") is not None
    except SqlParseError:
        return re.search(r"\border\s+by\b", re.sub(r"\([^()]*\)", "", sql), re.I) is not None


# --- execution match (pure) ------------------------------------------------------------

def normalize_value(value: Any) -> Any:
    """A cell value for comparison: floats rounded, integral floats as ints."""
    if isinstance(value, float):
        value = round(value, FLOAT_DECIMALS)
        return int(value) if value.is_integer() else value
    return value


def _column_orders(pred: list[tuple], gold: list[tuple]) -> Iterator[tuple[int, ...]]:
    """Orders of the predicted columns worth trying: identity first, then (up to
    :data:`MAX_COLUMN_ORDERS`) one-to-one mappings of each gold column to a predicted
    column holding the same multiset of values."""
    width = len(gold[0])
    identity = tuple(range(width))
    yield identity
    if width < 2 or width > MAX_PERMUTED_COLUMNS:
        return
    pred_cols = [Counter(row[i] for row in pred) for i in range(width)]
    gold_cols = [Counter(row[j] for row in gold) for j in range(width)]
    candidates = [[i for i in range(width) if pred_cols[i] == gold_cols[j]] for j in range(width)]

    def assign(prefix: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        if len(prefix) == width:
            yield prefix
            return
        for i in candidates[len(prefix)]:
            if i not in prefix:
                yield from assign(prefix + (i,))

    orders = (order for order in assign(()) if order != identity)
    yield from itertools.islice(orders, MAX_COLUMN_ORDERS)


def results_match(pred: list[tuple], gold: list[tuple], ordered: bool) -> bool:
    """True when two query results are equal: as lists if ``ordered`` else as multisets
    of rows, after :func:`normalize_value`, allowing the predicted columns in any order."""
    if len(pred) != len(gold):
        return False
    if not gold:
        return True
    pred_rows = [tuple(normalize_value(v) for v in row) for row in pred]
    gold_rows = [tuple(normalize_value(v) for v in row) for row in gold]
    if len(pred_rows[0]) != len(gold_rows[0]):
        return False
    gold_counter = None if ordered else Counter(gold_rows)
    for order in _column_orders(pred_rows, gold_rows):
        permuted = [tuple(row[i] for i in order) for row in pred_rows]
        if (permuted == gold_rows) if ordered else (Counter(permuted) == gold_counter):
            return True
    return False


# --- DISTINCT removal (pure) -----------------------------------------------------------

def _skip_quoted(sql: str, start: int) -> int:
    """Index just past the quoted string, identifier or comment starting at ``start``
    (the end of ``sql`` when it is not closed); ``start`` when nothing is quoted there."""
    opening = sql[start]
    if sql.startswith("--", start):
        end = sql.find("\n", start)
        return len(sql) if end < 0 else end
    if sql.startswith("/*", start):
        end = sql.find("*/", start + 2)
        return len(sql) if end < 0 else end + 2
    if opening in "'\"`[":
        end = sql.find("]" if opening == "[" else opening, start + 1)
        return len(sql) if end < 0 else end + 1  # a doubled quote ('it''s') is two strings in a row
    return start


def remove_distinct(sql: str) -> str:
    """``sql`` without its ``DISTINCT`` keywords, as the official Spider test-suite
    evaluator does before executing (``keep_distinct=False``): every DISTINCT word outside
    string literals, quoted identifiers and comments is dropped (``SELECT DISTINCT a`` ->
    ``SELECT  a``, ``count(DISTINCT a)`` -> ``count( a)``), except in ``IS [NOT] DISTINCT
    FROM``, an operator rather than a duplicate filter. Everything else is kept verbatim."""
    out: list[str] = []
    previous: list[str] = []  # the last two words, lower-case
    i = 0
    while i < len(sql):
        end = _skip_quoted(sql, i)
        if end > i:
            out.append(sql[i:end])
            i = end
            continue
        char = sql[i]
        if char.isalpha() or char == "_":
            end = i
            while end < len(sql) and (sql[end].isalnum() or sql[end] in "_$"):
                end += 1
            word = sql[i:end]
            operator = previous[-1:] == ["is"] or previous[-2:] == ["is", "not"]
            if word.lower() != "distinct" or operator:
                out.append(word)
            previous = (previous + [word.lower()])[-2:]
            i = end
            continue
        out.append(char)
        i += 1
    return "".join(out)
