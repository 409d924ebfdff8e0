"""Report sections for per-category speed, acceptance and the Spec-Bench leaderboard.

Pure functions from cells (:class:`cllm_bench.report.Cell`) to format-neutral
:class:`~cllm_bench.report.Section` objects that :func:`cllm_bench.report.build_document`
appends; the renderers (markdown, HTML, terminal) need nothing new.

* "Per category": one table per (model, task) whose cells carry ``by_category``
  (spec_bench, mt_bench): per decoder and Spec-Bench group, speedup with its per-repeat
  spread and tokens per forward;
* "Acceptance": per multi-token cell, mean accepted length with and without the bonus
  token, tokens per forward, and P(position i accepted | earlier accepted) for the first
  positions;
* "Spec-Bench leaderboard side by side": ``results/reference/spec_bench_leaderboard.json``
  beside our spec_bench cells of the same decoder family, marked as other models and
  hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from cllm_bench.categories import GROUP_LABELS, OVERALL, SPEC_BENCH_GROUPS
from cllm_bench.report.blocks import DASH, Block, Section, TableBlock, TextBlock, fmt_num, fmt_speedup
from cllm_bench.report.model import Cell, decoder_family, sorted_cells

#: published Spec-Bench methods our decoder family implements (default: the same name);
#: ``eagle`` is EAGLE-2's dynamic tree by default and EAGLE-1's static tree with ``tree=static``
PUBLISHED_METHODS: dict[str, tuple[str, ...]] = {"eagle": ("eagle", "eagle2")}
SPEC_BENCH_REFERENCE_JSON = Path(__file__).resolve().parents[2] / "results" / "reference" / "spec_bench_leaderboard.json"
POSITIONS_SHOWN = 6


def _who(cell: Cell, multi: bool) -> str:
    return cell.key[1] + (f" [{cell.run}]" if multi else "")


def _group_cell(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("speedup") is None:
        return DASH
    text = fmt_speedup(stats["speedup"])
    lo, hi = stats.get("speedup_min"), stats.get("speedup_max")
    if lo is not None and hi is not None and hi - lo > 0:
        text += f" ({lo:.2f}–{hi:.2f})"
    return f"{text}, {fmt_num(stats.get('tokens_per_forward'))} tok/fwd, n={stats.get('n_samples')}"


def category_tables(cells: Sequence[Cell], multi: bool) -> list[TableBlock]:
    """One table per (model, task) with per-category results; columns = Spec-Bench groups."""
    usable = [c for c in sorted_cells(cells) if isinstance(c.get("by_category"), dict) and c.get("by_category")]
    tables = []
    for model, task in dict.fromkeys((c.key[0], c.key[2]) for c in usable):
        mine = [c for c in usable if (c.key[0], c.key[2]) == (model, task)]
        groups = list(dict.fromkeys(g for c in mine for g in c.get("by_category")))
        headers = ("decoder", *(GROUP_LABELS.get(g, g) for g in groups))
        rows = tuple((_who(c, multi), *(_group_cell(c.get("by_category").get(g)) for g in groups)) for c in mine)
        tables.append(TableBlock(headers=headers, rows=rows, caption=f"{task} · {model}", kind="wrap"))
    return tables


def acceptance_table(cells: Sequence[Cell], multi: bool) -> TableBlock | None:
    """Mean accepted lengths and per-position acceptance of every multi-token cell."""
    usable = [c for c in sorted_cells(cells) if c.get("accepted_length_with_bonus") is not None]
    if not usable:
        return None
    width = min(POSITIONS_SHOWN, max(len(c.get("acceptance_per_position") or []) for c in usable))
    headers = ("task", "model", "decoder", "accepted len (with bonus)", "accepted len (draft only)", "tok/fwd",
               "decode forwards", *(f"P(pos {i})" for i in range(1, width + 1)))  # fmt: skip
    rows = []
    for c in usable:
        rates = list(c.get("acceptance_per_position") or [])
        trials = list(c.get("acceptance_position_trials") or [])
        shown = [
            DASH if i >= len(rates) or rates[i] is None else f"{rates[i]:.2f} ({trials[i] if i < len(trials) else '?'})"
            for i in range(width)
        ]
        hist = c.get("accepted_length_histogram") or {}
        rows.append((c.key[2], c.key[0], _who(c, multi), fmt_num(c.get("accepted_length_with_bonus")),
                     fmt_num(c.get("accepted_length_draft_only")), fmt_num(c.get("tokens_per_forward")),
                     str(sum(hist.values())), *shown))  # fmt: skip
    return TableBlock(headers=headers, rows=tuple(rows), kind="wrap")


ACCEPTANCE_TEXT = (
    "Per decode forward of the target model (prefill excluded): m = draft tokens accepted along the accepted path, "
    "plus one bonus token (the target's own next token). accepted len (with bonus) = mean of tokens made final per "
    "forward = m + 1 except where the output ended — Spec-Bench's and EAGLE's 'mean accepted tokens'; accepted len "
    "(draft only) = mean m — vLLM's 'accepted draft tokens'; tok/fwd divides by forwards + prefill instead. P(pos i) "
    "= P(draft position i accepted | positions < i accepted), in brackets the forwards that tried it; for a tree "
    "(Medusa) i is the depth on the accepted path, for lookahead the position in the best n-gram candidate, for "
    "Jacobi the position in the block's unverified suffix. Formulas: docs/report.md, 'Acceptance'."
)


def speed_sections(cells: Sequence[Cell], multi: bool) -> list[Section]:
    """The per-category and acceptance sections (only those with data)."""
    sections = []
    tables = category_tables(cells, multi)
    if tables:
        intro = TextBlock(
            "Spec-Bench's grouping: MT-bench's eight categories pooled as multi-turn conversation, then translation, "
            "summarization, question answering, math reasoning, RAG, and overall. Per cell: speedup = tokens/s ÷ ar's "
            "over the same questions (min–max of the per-repeat ratio in brackets), tokens per target forward, "
            "questions."
        )
        sections.append(Section("Per category", "per-category", (intro, *tables)))
    acc = acceptance_table(cells, multi)
    if acc is not None:
        sections.append(Section("Acceptance", "acceptance", (TextBlock(ACCEPTANCE_TEXT), acc)))
    return sections


# --------------------------------------------------------------- Spec-Bench leaderboard
def load_spec_bench_reference(path: Path = SPEC_BENCH_REFERENCE_JSON) -> dict[str, Any] | None:
    """The transcribed leaderboard, or None when the file is absent (installed without the source tree)."""
    from cllm_bench.report.facts import load_reference

    return load_reference(path)


def leaderboard_table(cells: Sequence[Cell], reference: Mapping[str, Any], multi: bool) -> TableBlock:
    """Per decoder family we have: every published row (device, model) and our spec_bench cells."""
    groups = [*SPEC_BENCH_GROUPS, OVERALL]
    headers = ("method", "source (model, hardware)", *(GROUP_LABELS[g] for g in groups), "mean accepted tokens")
    ours = [c for c in sorted_cells(cells) if c.key[2] == "spec_bench" and isinstance(c.get("by_category"), dict)]
    families = list(dict.fromkeys(decoder_family(c.key[1]) for c in ours))
    published = list(dict.fromkeys(str(e.get("method")) for e in reference["entries"]))
    first = {f: min((published.index(m) for m in PUBLISHED_METHODS.get(f, (f,)) if m in published), default=-1)
             for f in families}  # fmt: skip
    shown = sorted((f for f in families if first[f] >= 0), key=first.__getitem__)  # the published order
    rows, classes = [], []
    for family in shown:
        methods = PUBLISHED_METHODS.get(family, (family,))
        for e in (e for e in reference["entries"] if e.get("method") in methods):
            by = e.get("speedup_by_category") or {}
            values = [by.get(g) if g != OVERALL else e.get("speedup") for g in groups]
            rows.append((f"{e.get('method_label')} (published)", f"{e.get('model')}, {e.get('hardware', '').split(';')[0]}",
                         *(fmt_speedup(v) for v in values), fmt_num(e.get("mean_accepted_tokens"))))  # fmt: skip
            classes.append("")
        for c in (c for c in ours if decoder_family(c.key[1]) == family):
            by = c.get("by_category")
            rows.append((f"{_who(c, multi)} (ours)", f"{c.key[0]}, this run",
                         *(fmt_speedup((by.get(g) or {}).get("speedup")) for g in groups),
                         fmt_num(c.get("accepted_length_with_bonus"))))  # fmt: skip
            classes.append("good")
    return TableBlock(headers=headers, rows=tuple(rows), row_class=tuple(classes), kind="wrap")


def leaderboard_section(cells: Sequence[Cell], reference: Mapping[str, Any] | None, multi: bool) -> Section | None:
    """The side-by-side section; None when no spec_bench cell was measured."""
    if not any(c.key[2] == "spec_bench" for c in cells):
        return None
    if reference is None:
        return Section("Spec-Bench leaderboard side by side", "spec-bench-leaderboard",
                       (TextBlock(f"Omitted: {SPEC_BENCH_REFERENCE_JSON} was not found.", "note"),))  # fmt: skip
    caveat = TextBlock(
        "Other models and hardware: the published rows are Vicuna-v1.3 7B/13B/33B in float16 on one RTX 3090 or "
        "A100 (Spec-Bench leaderboard, with its trained drafts and heads), speedup = mean of per-question tokens/s "
        "(prefill included) ÷ the same for HF generate; ours are this run's model, device and decoders (untrained "
        "drafts/heads unless the run loaded trained ones), speedup = total tokens/s ÷ ar's on the same questions. "
        "Compare the shape across categories, not the values. Methods without a cllm-bench decoder (EAGLE-3, Hydra, "
        "REST, Recycling, SAMD) are in results/reference/spec_bench_leaderboard.json. Source: "
        + str(reference.get("description", ""))[:160] + "…",
        "warning",
    )
    table = leaderboard_table(cells, reference, multi)
    blocks: list[Block] = [caveat]
    if table.rows:
        blocks.append(table)
    else:
        blocks.append(TextBlock("None of this run's decoders has a published Spec-Bench row (published: speculative, "
                                "prompt_lookup, medusa, lookahead, eagle (EAGLE-1 and EAGLE-2) and methods we do not "
                                "implement).", "note"))  # fmt: skip
    return Section("Spec-Bench leaderboard side by side", "spec-bench-leaderboard", tuple(blocks))
