"""Ours vs HF: each of our multi-token decoders next to its transformers counterpart.

Pairs (same run, same model, same prompts; only when both ran):

* ``speculative:draft=D,k=N``  <->  ``hf:assistant=D[,k=M]`` (HF assisted generation);
* ``prompt_lookup:ngram=G,k=N``  <->  ``hf:prompt_lookup=M[,ngram=H]`` (HF prompt lookup).

A speculative decoder is paired only with an assistant of the same draft spec (defaults
filled in: ``speculative``'s default draft is ``self:layers=4``). Among several HF
counterparts the one with the same setting wins (k = M; for prompt lookup also G = H,
HF's ``ngram`` defaulting to 2); otherwise the first one, and the ``setting`` column says
what differs. The ratio is ours ÷ HF in tokens/s (> 1: ours is faster), with a
conservative bracket from the min–max over repeats when both carry one
(ours_min / HF_max … ours_max / HF_min).

Pure functions of result rows; :func:`bench_table` (``cllm-bench bench``) and
:func:`report_section` (``cllm-bench report``) render them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from cllm_bench.decoders.base import split_spec
from cllm_bench.errors import UserError

#: HF's prompt lookup matches n-grams up to this size when ``ngram`` is not given
HF_DEFAULT_NGRAM = 2


@dataclass(frozen=True)
class Method:
    """What a decoder label means for pairing.

    family: "speculative" or "prompt_lookup" (the method, ours or HF's).
    hf: True for the transformers variant.
    draft: the draft / assistant spec (speculative only, "" otherwise).
    k: tokens proposed per round (0: HF's own default schedule).
    ngram: longest n-gram matched (prompt lookup only, 0 otherwise).
    """

    family: str
    hf: bool
    draft: str = ""
    k: int = 0
    ngram: int = 0


def _params(name: str, raw: Mapping[str, str]) -> dict[str, str]:
    """``raw`` over the registered decoder's defaults (labels omit default values)."""
    from cllm_bench.registry import DECODERS

    defaults = {f.name: f.default for f in dataclasses.fields(DECODERS.get(name))}
    return {**{k: str(v) for k, v in defaults.items()}, **raw}


def method_of(label: str) -> Method | None:
    """The :class:`Method` of a decoder label, or None when it takes no part in a pair."""
    try:
        name, raw = split_spec(label)
    except UserError:
        return None
    if name not in ("speculative", "prompt_lookup", "hf"):
        return None
    if name == "hf" and not (raw.get("assistant") or raw.get("prompt_lookup", "0") != "0"):
        return None  # plain generate: not a peer
    try:
        p = _params(name, raw)
        if name == "speculative":
            return None if float(p["temperature"]) > 0 else Method("speculative", False, p["draft"], int(p["k"]))
        if name == "prompt_lookup":
            return Method("prompt_lookup", False, k=int(p["k"]), ngram=int(p["ngram"]))
        if p["assistant"]:
            return Method("speculative", True, p["assistant"], int(p["k"]))
        return Method("prompt_lookup", True, k=int(p["prompt_lookup"]), ngram=int(p["ngram"]) or HF_DEFAULT_NGRAM)
    except (KeyError, ValueError):
        return None


def setting_note(ours: Method, hf: Method) -> str:
    """"same" when both propose alike, else what differs (e.g. ``k 5 vs HF default``)."""
    diffs = []
    if ours.k != hf.k:
        diffs.append(f"k {ours.k} vs " + (str(hf.k) if hf.k else "HF default schedule"))
    if ours.family == "prompt_lookup" and ours.ngram != hf.ngram:
        diffs.append(f"ngram {ours.ngram} vs {hf.ngram}")
    return "same" if not diffs else "; ".join(diffs)


def pair_labels(labels: Sequence[str]) -> list[tuple[str, str, str]]:
    """(ours, HF counterpart, setting note) for every label of ours that has one, in order."""
    methods = {label: method_of(label) for label in dict.fromkeys(labels)}
    hf = [(label, m) for label, m in methods.items() if m is not None and m.hf]
    pairs = []
    for label, m in methods.items():
        if m is None or m.hf:
            continue
        candidates = [(h, hm) for h, hm in hf if hm.family == m.family and hm.draft == m.draft]
        if not candidates:
            continue
        same = [(h, hm) for h, hm in candidates if setting_note(m, hm) == "same"]
        h, hm = (same or candidates)[0]
        pairs.append((label, h, setting_note(m, hm)))
    return pairs


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


@dataclass(frozen=True)
class PeerRow:
    """One ours-vs-HF comparison; ``ratio`` = ours ÷ HF tokens/s (bracket when known)."""

    ours: str
    hf: str
    setting: str
    ours_tps: float | None
    hf_tps: float | None
    ratio: float | None
    ratio_lo: float | None
    ratio_hi: float | None
    ours_tpf: float | None
    hf_tpf: float | None
    ours_match: Any
    hf_match: Any


def peer_rows(records: Sequence[Mapping[str, Any]], label_of: Callable[[Mapping[str, Any]], str],
              match_key: str) -> list[PeerRow]:  # fmt: skip
    """Pair the records of ONE run (and one model and task) by their decoder labels.

    records: result rows with ``tokens_per_s`` (and optionally ``tokens_per_s_min``/
    ``_max``), ``tokens_per_forward`` and ``match_key`` (``match_ar`` in a run,
    ``match_hf_eager`` in a bench). label_of: a record's decoder label.
    """
    by_label = {label_of(r): r for r in records}
    rows = []
    for ours, hf, note in pair_labels(list(by_label)):
        o, h = by_label[ours], by_label[hf]
        rows.append(PeerRow(
            ours, hf, note, o.get("tokens_per_s"), h.get("tokens_per_s"),
            _ratio(o.get("tokens_per_s"), h.get("tokens_per_s")),
            _ratio(o.get("tokens_per_s_min"), h.get("tokens_per_s_max")),
            _ratio(o.get("tokens_per_s_max"), h.get("tokens_per_s_min")),
            o.get("tokens_per_forward"), h.get("tokens_per_forward"), o.get(match_key), h.get(match_key),
        ))  # fmt: skip
    return rows


def _num(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:{spec}}{suffix}"


def _match(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _num(value * 100, ".0f", "%") if isinstance(value, (int, float)) else "—"


def format_ratio(row: PeerRow) -> str:
    text = _num(row.ratio, ".2f", "x")
    spread = row.ratio_lo is not None and row.ratio_hi is not None and f"{row.ratio_lo:.2f}" != f"{row.ratio_hi:.2f}"
    if spread and row.ratio is not None:  # one repeat (or no spread): no bracket
        text += f" ({row.ratio_lo:.2f}–{row.ratio_hi:.2f})"
    return text


HEADERS = ("ours", "HF counterpart", "setting", "tok/s ours", "tok/s HF", "ours ÷ HF", "tok/fwd ours",
           "tok/fwd HF", "same output ours", "same output HF")  # fmt: skip


def table_cells(row: PeerRow) -> tuple[str, ...]:
    return (row.ours, row.hf, row.setting, _num(row.ours_tps, ".1f"), _num(row.hf_tps, ".1f"), format_ratio(row),
            _num(row.ours_tpf), _num(row.hf_tpf), _match(row.ours_match), _match(row.hf_match))  # fmt: skip


def bench_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A rich table "ours vs HF" for ``cllm-bench bench`` result rows (None when nothing pairs).

    Bench rows carry ``method`` (the decoder label) and ``match_hf_eager``.
    """
    from rich.table import Table

    pairs = peer_rows(rows, lambda r: str(r.get("method", r.get("decoder", ""))), "match_hf_eager")
    if not pairs:
        return None
    table = Table(title="ours vs HF (same prompts, same run; ours ÷ HF > 1 = ours faster)")
    for col in HEADERS:
        label = col in ("ours", "HF counterpart", "setting")
        table.add_column(col, justify="left" if label else "right", overflow="fold" if label else "ellipsis")
    for row in pairs:
        table.add_row(*table_cells(row))
    return table


REPORT_TEXT = (
    "Each of our decoders next to its transformers counterpart in the same run (same model, task, prompts and "
    "repeats): speculative vs hf:assistant (HF assisted generation), prompt_lookup vs hf:prompt_lookup. ours ÷ HF = "
    "ratio of tokens/s (> 1: ours is faster), in brackets ours_min ÷ HF_max – ours_max ÷ HF_min over repeats; "
    "tok/fwd "
    "= generated tokens per target forward, counted the same way for both; same output = match_ar. setting says "
    "where the two propose differently (k, ngram). Pairing rules: cllm_bench/peers.py."
)


def report_section(cells: Sequence[Any], multi: bool) -> Any:
    """The report's "Ours vs HF" section (None when no pair ran), one table per run, model and task.

    cells: :class:`cllm_bench.report.model.Cell` objects.
    """
    from cllm_bench.report.blocks import Section, TableBlock, TextBlock

    tables = []
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for cell in cells:
        groups.setdefault((cell.run, cell.key[0], cell.key[2]), []).append(cell)
    for (run, model, task), members in groups.items():
        pairs = peer_rows([c.record for c in members], lambda r: str(r["decoder"]), "match_ar")
        if pairs:
            caption = f"{task} · {model}" + (f" · {run}" if multi else "")
            tables.append(TableBlock(headers=HEADERS, rows=tuple(table_cells(p) for p in pairs), caption=caption,
                                     row_class=tuple("good" if (p.ratio or 0) >= 1 else "" for p in pairs),
                                     kind="wrap"))  # fmt: skip
    if not tables:
        return None
    return Section("Ours vs HF", "peers", (TextBlock(REPORT_TEXT), *tables))
