"""Layer 3 of the report: the format-neutral :class:`~cllm_bench.report.blocks.Document`
(:func:`build_document`) built from runs, facts and plots.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from cllm_bench.report.blocks import (
    DASH,
    Block,
    Document,
    PlotBlock,
    Section,
    TableBlock,
    TextBlock,
    fmt_accuracy,
    fmt_num,
    fmt_pct,
    fmt_seconds,
    fmt_speedup,
    fmt_tps,
    fmt_value,
)
from cllm_bench.report.facts import (
    FLAG_LEGEND,
    REFERENCE_JSON,
    TPS_TOLERANCE,
    DiffRow,
    PaperRow,
    cell_flags,
    diff_cells,
    paper_rows,
    run_wide_flags,
    synthetic_banner,
)
from cllm_bench.report.model import Cell, Run, cells_of, sorted_cells
from cllm_bench.report.speed import leaderboard_section, speed_sections


def provenance_items(run: Run) -> tuple[tuple[str, str], ...]:
    """Provenance of one run as (label, value) pairs, in reading order."""
    p = run.provenance
    packages = p.get("packages") or {}
    pkg = ", ".join(f"{k} {v}" for k, v in packages.items()) if isinstance(packages, dict) else fmt_value(packages)
    device = p.get("device")
    device_name = p.get("device_name")
    device_text = f"{device} ({device_name})" if device_name and device_name != device else fmt_value(device)
    command = p.get("command") or (" ".join(map(str, p["argv"])) if isinstance(p.get("argv"), list) else None)
    items = [
        ("run folder", str(run.path)),
        ("device", device_text),
        ("dtype", fmt_value(p.get("dtype"))),
        ("cllm-bench", fmt_value(p.get("cllm_bench_version"))),
        ("git commit", fmt_value(p.get("git_commit"))),
        ("packages", pkg or DASH),
        ("command", fmt_value(command)),
        ("started / ended", f"{fmt_value(p.get('start_time'))} / {fmt_value(p.get('end_time'))}"),
        ("seed", fmt_value(p.get("seed"))),
        ("repeats / warm-up", f"{fmt_value(p.get('repeats'))} / {fmt_value(p.get('warmup'))}"),
        ("max_new_tokens / limit", f"{fmt_value(p.get('max_new_tokens'))} / {fmt_value(p.get('limit'))}"),
        ("finished", {True: "yes", False: "NO (partial run)"}.get(p.get("complete"), fmt_value(p.get("complete")))),
    ]
    health = p.get("timing_health")
    if isinstance(health, dict):
        problems = health.get("problems") or []
        items.append(("timing health", "quiet machine" if not problems else "BUSY: " + "; ".join(map(str, problems))))
    return tuple(items)


def provenance_table(runs: Sequence[Run]) -> TableBlock:
    """Provenance of all runs side by side: one row per field, one column per run."""
    items = [provenance_items(r) for r in runs]
    rows = tuple((label,) + tuple(it[i][1] for it in items) for i, (label, _) in enumerate(items[0]))
    return TableBlock(headers=("",) + tuple(f"run {r.label}" for r in runs), rows=rows, kind="provenance")


RESULT_HEADERS: tuple[str, ...] = (
    "task",
    "model",
    "decoder",
    "n",
    "reps",
    "accuracy ± SE",
    "tokens/s (min–max)",
    "speedup",
    "tok/fwd",
    "fast-fwd",
    "stationary",
    "match_ar",
    "TTFT",
    "flags",
)


def results_table(cells: Sequence[Cell], with_run: bool, suppress: frozenset[str] = frozenset()) -> TableBlock:
    """The main table: one row per cell, flagged rows marked (``suppress``: codes stated run-wide)."""
    headers = (("run",) if with_run else ()) + RESULT_HEADERS
    rows, classes = [], []
    for cell in sorted_cells(cells):
        r = cell.record
        flags = [f for f in cell_flags(r) if f.code not in suppress]
        row = ((cell.run,) if with_run else ()) + (
            cell.key[2],
            cell.key[0],
            cell.key[1],
            str(r.get("n_samples")),
            fmt_value(r.get("repeats")),
            fmt_accuracy(r),
            fmt_tps(r),
            fmt_speedup(r.get("speedup")),
            fmt_num(r.get("tokens_per_forward")),
            fmt_num(r.get("fast_forwarded")),
            fmt_num(r.get("stationary")),
            fmt_pct(r.get("match_ar"), 0),
            fmt_seconds(r.get("ttft_s")),
            " ".join(f"⚠ {f.code}" for f in flags) if flags else "",
        )
        rows.append(tuple(row))
        codes = {f.code for f in flags} - {"FEW-REPEATS"}
        classes.append("bad" if "MISMATCH" in codes else "warn" if codes else "")
    return TableBlock(headers=headers, rows=tuple(rows), row_class=tuple(classes))


def flag_notes(cells: Sequence[Cell], suppress: frozenset[str] = frozenset()) -> list[str]:
    """One line per (task, model, flag, numbers) with the decoders (and runs) it applies to."""
    multi = len({c.run for c in cells}) > 1
    groups: dict[tuple[str, str, str, str], dict[str, list[str]]] = {}
    for cell in sorted_cells(cells):
        model, decoder, task = cell.key
        for flag in cell_flags(cell.record):
            if flag.code in suppress:
                continue
            groups.setdefault((task, model, flag.code, flag.message), {}).setdefault(decoder, []).append(cell.run)
    notes = []
    for (task, model, code, message), decoders in groups.items():
        who = ", ".join(f"{d} ({', '.join(runs)})" if multi else d for d, runs in decoders.items())
        notes.append(f"{code} ({message}) — {task} / {model}: {who}")
    return notes


def degenerate_table(cells: Sequence[Cell], with_run: bool) -> TableBlock | None:
    """Jacobi statistics with and without degenerate outputs (>= 10 identical tokens in a row),
    when the run was asked to exclude them (records carry ``*_excl_degenerate``)."""
    mine = [c for c in sorted_cells(cells) if "fast_forwarded_excl_degenerate" in c.record]
    if not mine:
        return None
    headers = (("run",) if with_run else ()) + (
        "task",
        "model",
        "decoder",
        "n",
        "excluded",
        "fast-fwd",
        "fast-fwd excl.",
        "stationary",
        "stationary excl.",
    )
    rows = tuple(
        ((c.run,) if with_run else ())
        + (
            c.key[2],
            c.key[0],
            c.key[1],
            str(c.get("n_samples")),
            fmt_value(c.get("excluded_degenerate")),
            fmt_num(c.get("fast_forwarded")),
            fmt_num(c.get("fast_forwarded_excl_degenerate")),
            fmt_num(c.get("stationary")),
            fmt_num(c.get("stationary_excl_degenerate")),
        )
        for c in mine
    )
    caption = "Jacobi statistics without requests whose output repeats one token >= 10 times (the reference's filter)"
    return TableBlock(headers=headers, rows=rows, caption=caption)


def sample_count_notes(cells: Sequence[Cell]) -> list[str]:
    """Cells whose samples.jsonl lines do not match their n_samples (a partial log?)."""
    notes = []
    for cell in sorted_cells(cells):
        n = cell.get("n_samples") or 0
        if len(cell.samples) != n:
            model, decoder, task = cell.key
            notes.append(
                f"{task} / {model} / {decoder} ({cell.run}): summary.json says n={n} but samples.jsonl has "
                f"{len(cell.samples)} line(s); per-sample plots use the lines present"
            )
    return notes


def task_metrics_tables(cells: Sequence[Cell], with_run: bool) -> list[TableBlock]:
    """Task-specific metrics (``task_metrics``), one table per task, one column per metric."""
    tables = []
    for task in sorted({c.key[2] for c in cells}):
        mine = sorted_cells(c for c in cells if c.key[2] == task)
        names = list(dict.fromkeys(name for c in mine for name in (c.get("task_metrics") or {})))
        if not names:
            continue
        headers = (("run",) if with_run else ()) + ("model", "decoder", "n") + tuple(names)
        rows = tuple(
            ((c.run,) if with_run else ())
            + (c.key[0], c.key[1], str(c.get("n_samples")))
            + tuple(fmt_value((c.get("task_metrics") or {}).get(n)) for n in names)
            for c in mine
        )
        tables.append(TableBlock(headers=headers, rows=rows, caption=f"{task}: task metrics as the task reports them"))
    return tables


def diff_table(rows: Sequence[DiffRow]) -> TableBlock:
    headers = (
        "task",
        "model",
        "decoder",
        "accuracy (old → new)",
        "Δ acc (SE)",
        "tokens/s (old → new)",
        "Δ tok/s",
        "speedup (old → new)",
        "verdict",
    )
    out, classes = [], []
    for d in rows:
        model, decoder, task = d.key
        a0, a1 = d.accuracy
        t0, t1 = d.tokens_per_s
        s0, s1 = d.speedup
        d_acc = DASH if a0 is None or a1 is None else f"{100 * (a1 - a0):+.1f} pt ({100 * (d.accuracy_se or 0):.1f})"
        d_tps = DASH if not t0 or t1 is None else f"{100 * (t1 - t0) / t0:+.1f}%"
        out.append(
            (
                task,
                model,
                decoder,
                f"{fmt_pct(a0)} → {fmt_pct(a1)}",
                d_acc,
                f"{fmt_num(t0, 1)} → {fmt_num(t1, 1)}",
                d_tps,
                f"{fmt_speedup(s0)} → {fmt_speedup(s1)}",
                "; ".join(("⚠ " + v) if v.startswith("REGRESSION") else v for v in d.verdicts) or "within noise",
            )
        )
        classes.append("bad" if d.regression else "good" if d.verdicts else "")
    return TableBlock(headers=headers, rows=tuple(out), row_class=tuple(classes))


def _paper_entry_text(entry: Mapping[str, Any], field_name: str) -> str:
    value = entry.get(field_name)
    if value is None:
        return ""
    approx = "≈" if entry.get(f"{field_name}_read_off_plot") else ""
    unit = "×" if field_name == "speedup" else " tok/s"
    size = entry.get("model_size")
    who = f" [{size}]" if size else ""
    digits = 2 if field_name == "speedup" and round(value, 1) != value else 1
    return f"{approx}{value:.{digits}f}{unit}{who}"


def paper_table(rows: Sequence[PaperRow], with_run: bool = False) -> TableBlock:
    headers = (
        "task",
        "method",
        "paper speedup",
        "paper tokens/s",
        "paper source",
        "ours: model / decoder",
        "ours: speedup",
        "ours: tokens/s",
        "ours: n × reps",
    )
    out = []
    for row in rows:
        paper_speed = "; ".join(t for t in (_paper_entry_text(e, "speedup") for e in row.paper) if t) or DASH
        paper_tps = "; ".join(t for t in (_paper_entry_text(e, "tokens_per_s") for e in row.paper) if t) or DASH
        sources = "; ".join(dict.fromkeys(str(e.get("source_short", e.get("source", ""))) for e in row.paper))
        if not row.ours:
            out.append((row.task, row.method, paper_speed, paper_tps, sources, "not measured", DASH, DASH, DASH))
            continue
        for i, cell in enumerate(sorted_cells(row.ours)):
            out.append(
                (
                    row.task if i == 0 else "",
                    row.method if i == 0 else "",
                    paper_speed if i == 0 else "",
                    paper_tps if i == 0 else "",
                    sources if i == 0 else "",
                    f"{cell.key[0]} / {cell.key[1]}" + (f" [{cell.run}]" if with_run else ""),
                    fmt_speedup(cell.get("speedup")),
                    fmt_tps(cell.record),
                    f"{cell.get('n_samples')} × {fmt_value(cell.get('repeats'))}",
                )
            )
    return TableBlock(headers=headers, rows=tuple(out), kind="wrap")


def paper_caveat(reference: Mapping[str, Any], runs: Sequence[Run]) -> str:
    """The sentence that keeps the side-by-side honest: what differs between paper and us."""
    ours = sorted({str(c["model"]) for r in runs for c in r.results})
    devices = sorted({str(r.provenance.get("device_name") or r.provenance.get("device") or "unknown device") for r in runs})
    dtypes = sorted({str(r.provenance.get("dtype") or "unknown dtype") for r in runs})
    stated = sorted({str(e["hardware"]) for e in reference.get("entries", []) if e.get("hardware", "not stated") != "not stated"})
    hardware = "hardware the sources do not state" + (f" or other devices ({'; '.join(stated)})" if stated else "")
    return (
        f"Not a like-for-like comparison: the published numbers come from 7B-class (and larger) models on {hardware}, "
        "with the reference scripts' own timing rules; this report measured "
        f"{', '.join(ours)} on {', '.join(devices)} in {', '.join(dtypes)}. Compare the shape (which method gains "
        "on which task, base model vs CLLM), not absolute values. ≈ marks a value read off a bar chart "
        f"({reference.get('read_off_plot_note', 'estimated from bar heights')}); "
        "speedups without ≈ are labels printed in the figure."
    )


def build_document(runs: Sequence[Run], plots: Sequence[Any], reference: Mapping[str, Any] | None,
                   spec_bench_reference: Mapping[str, Any] | None = None) -> Document:  # fmt: skip
    """Everything the md/html reports show, format-neutral. ``spec_bench_reference``: the
    transcribed Spec-Bench leaderboard (:mod:`cllm_bench.report.speed`), shown beside
    spec_bench cells."""
    from cllm_bench.peers import report_section as peers_section

    all_cells = [c for r in runs for c in cells_of(r)]
    multi = len(runs) > 1
    banner = synthetic_banner(runs)
    sections: list[Section] = []

    synthetic_runs = [r.label for r in runs if r.provenance.get("synthetic") is True]
    banner_blocks: tuple[Block, ...] = (
        (
            TextBlock(
                f"{banner}: run(s) {', '.join(synthetic_runs)} carry provenance synthetic = true "
                "(made-up numbers from a fixture, not timed on any device).",
                "warning",
            ),
        )
        if banner
        else ()
    )
    sections.append(
        Section(
            "Provenance",
            "provenance",
            banner_blocks + (provenance_table(runs),),
        )
    )

    blocks: list[Block] = [
        TextBlock(
            "One row per (task, model, decoder). accuracy ± one binomial standard error; tokens/s = generated "
            "tokens / decode time, median over timed repeats with the min–max spread in brackets; speedup = "
            "tokens/s ÷ ar's on the same model and task in the same run; tok/fwd = generated tokens per target "
            "forward; fast-fwd and stationary = Jacobi statistics as the CLLM reference counts them (fast-fwd per "
            "block, stationary per request); match_ar = share of samples identical to ar; TTFT = median time to "
            "first token. n = samples, reps = timed repeats."
        ),
    ]
    wide = frozenset(run_wide_flags(all_cells))
    if wide:
        blocks.append(
            TextBlock("Every cell: " + "; ".join(f"⚠ {code} = {FLAG_LEGEND[code]}" for code in sorted(wide)), "warning")
        )
    blocks += [
        results_table(all_cells, multi, wide),
        TextBlock("Flags: " + "; ".join(f"⚠ {code} = {text}" for code, text in FLAG_LEGEND.items()), "note"),
    ]
    unfinished = [r.label for r in runs if r.provenance.get("complete") is False]
    if unfinished:
        blocks.insert(
            0,
            TextBlock(
                f"Run(s) {', '.join(unfinished)} did not finish (provenance complete = false): the tables cover the "
                "cells finished so far. Re-run the same `cllm-bench run` command to resume.",
                "warning",
            ),
        )
    degenerate = degenerate_table(all_cells, multi)
    notes = flag_notes(all_cells, wide)
    if notes:
        blocks.append(TextBlock("Flagged cells:\n" + "\n".join(f"- {n}" for n in notes), "warning"))
    mismatched = sample_count_notes(all_cells)
    if mismatched:
        blocks.append(
            TextBlock("Per-sample log does not match the summary:\n" + "\n".join(f"- {n}" for n in mismatched), "warning")
        )
    if degenerate is not None:
        blocks.append(degenerate)
    sections.append(Section("Results", "results", tuple(blocks)))

    if plots:
        sections.append(Section("Plots", "plots", tuple(PlotBlock(p) for p in plots)))
    sections += speed_sections(all_cells, multi)
    if (peers := peers_section(all_cells, multi)) is not None:  # ours vs HF, when both ran
        sections.append(peers)
    tm_tables = task_metrics_tables(all_cells, multi)
    if tm_tables:
        sections.append(Section("Task metrics", "task-metrics", tuple(tm_tables)))

    if reference is None:
        sections.append(
            Section(
                "Published numbers side by side",
                "paper",
                (TextBlock(f"Omitted: {REFERENCE_JSON} was not found (it ships with the source checkout).", "note"),),
            )
        )
    else:
        prow = paper_rows(all_cells, reference)
        pblocks: list[Block] = [TextBlock(paper_caveat(reference, runs), "warning")]
        if prow:
            pblocks.append(paper_table(prow, multi))
        else:
            published = ", ".join(sorted({str(e.get("task")) for e in reference.get("entries", [])}))
            pblocks.append(
                TextBlock(f"None of the tasks in this run has a published number (published: {published}).", "note")
            )
        claims = reference.get("claims") or []
        if claims:
            pblocks.append(
                TextBlock(
                    "Headline claims in the sources (text, not per task):\n"
                    + "\n".join(f"- {c.get('claim')} — {c.get('source')}" for c in claims),
                    "note",
                )
            )
        sections.append(Section("Published numbers side by side", "paper", tuple(pblocks)))
    leaderboard = leaderboard_section(all_cells, spec_bench_reference, multi)
    if leaderboard is not None:
        sections.append(leaderboard)

    if multi:
        base = runs[0]
        dblocks: list[Block] = [
            TextBlock(
                f"Each later run compared with the baseline run {base.label}. A tokens/s change is flagged only when the "
                f"two runs' min–max ranges over repeats do not overlap and the medians differ by more than "
                f"{TPS_TOLERANCE:.0%}; an accuracy change only when it exceeds one binomial standard error of the "
                "difference; match_ar of a lossless decoder must not drop."
            )
        ]
        base_cells = cells_of(base)
        for other in runs[1:]:
            rows, only_base, only_new = diff_cells(base_cells, cells_of(other))
            n_reg = sum(r.regression for r in rows)
            headline = f"{base.label} → {other.label}: {len(rows)} cells in both, {n_reg} regression(s)."
            dblocks.append(TextBlock(headline, "warning" if n_reg else "text"))
            if rows:
                dblocks.append(diff_table(rows))
            lonely = [(base.label, only_base), (other.label, only_new)]
            parts = [f"only in {label}: " + ", ".join("/".join(k) for k in keys) for label, keys in lonely if keys]
            if parts:
                dblocks.append(TextBlock("Not compared (present in one run only): " + "; ".join(parts), "note"))
        sections.append(Section("Comparing runs", "diff", tuple(dblocks)))

    title = f"cllm-bench report ({banner})" if banner else "cllm-bench report"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{', '.join(r.label for r in runs)} — generated {generated}"
    return Document(title=title, subtitle=subtitle, sections=tuple(sections))
