"""Learning curves of consistency training in the report (``cllm-bench report --curves
MANIFEST``): the ``curve`` a ``train cllm --eval-every K`` run writes into its manifest.

Per curve point (see :mod:`cllm_bench.trainers.curves`): Jacobi tokens per forward,
fast-forwarded and stationary counts and ``match_base`` on held-out and training prompts,
and the mean AR / consistency losses of the updates since the previous point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cllm_bench.errors import UserError
from cllm_bench.report.blocks import PlotBlock, Section, TableBlock, TextBlock


@dataclass(frozen=True)
class Curve:
    """One training run's curve. label: the manifest's folder name; points: as written."""

    label: str
    path: Path
    points: tuple[Mapping[str, Any], ...]
    settings: Mapping[str, Any]


def load_curve(path: Path) -> Curve:
    """The curve of a ``train cllm`` manifest; UserError naming the fix when it has none."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--curves {path}: cannot read a training manifest ({exc})") from None
    points = manifest.get("curve") if isinstance(manifest, dict) else None
    if not points:
        raise UserError(f"--curves {path}: no learning curve in this manifest; train with `cllm-bench train cllm --eval-every K`")
    label = path.parent.name if path.name == "manifest.json" else path.stem
    return Curve(label, path, tuple(points), manifest.get("curve_settings") or {})


def _get(point: Mapping[str, Any], where: str, key: str) -> float | None:
    value = point.get(where, {}).get(key) if where else point.get(key)
    return value if isinstance(value, (int, float)) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


COLUMNS = (
    ("held-out tok/fwd", "heldout", "tokens_per_forward", 3),
    ("train tok/fwd", "train", "tokens_per_forward", 3),
    ("held-out fast-fwd", "heldout", "fast_forwarded", 2),
    ("held-out stationary", "heldout", "stationary", 2),
    ("held-out match_base", "heldout", "match_base", 2),
    ("train match_base", "train", "match_base", 2),
    ("AR loss", "", "train_ar_loss", 3),
    ("consistency loss", "", "train_consistency_loss", 3),
)


def curve_rows(curve: Curve) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(headers, rows) of a curve's table, one row per point."""
    headers = ("update",) + tuple(c[0] for c in COLUMNS)
    rows = tuple(
        (str(p.get("update")),) + tuple(_fmt(_get(p, where, key), digits) for _, where, key, digits in COLUMNS)
        for p in curve.points
    )
    return headers, rows


def curves_section(curves: Sequence[Curve], banner: str | None = None) -> tuple[Any, Any]:
    """(Section, Plot) of the learning curves."""

    plot = plot_curves(curves, banner)
    blocks: list[Any] = [TextBlock(
        "Jacobi decoding with the model as it was after each number of updates: held-out prompts (never trained "
        "on) and the first training prompts. match_base = share of outputs identical to the step-0 model's "
        "greedy outputs; losses = mean of the updates since the previous point."
    )]
    for curve in curves:
        headers, rows = curve_rows(curve)
        s = curve.settings
        caption = f"{curve.label} ({curve.path})"
        if s:
            caption += (f": {s.get('eval_limit')} prompts per set from {s.get('eval_prompts')}/{s.get('eval_split')}, "
                        f"n={s.get('eval_n')}, {s.get('eval_max_new_tokens')} new tokens")
        blocks.append(TableBlock(headers, rows, caption=caption))
    blocks.append(PlotBlock(plot))
    return Section("Learning curves", "curves", tuple(blocks)), plot


def plot_curves(curves: Sequence[Curve], banner: str | None = None) -> Any:
    """Tokens per forward vs updates (held-out solid, training dashed) and the two loss terms."""
    from cllm_bench.report.plot_style import Plot, figure_png, new_figure  # matplotlib: only when plotting

    fig = new_figure(10, 4)
    ax_tpf, ax_loss = fig.subplots(1, 2)
    for i, curve in enumerate(curves):
        color = f"C{i}"
        updates = [p.get("update", 0) for p in curve.points]
        for where, style in (("heldout", "-"), ("train", "--")):
            ys = [_get(p, where, "tokens_per_forward") for p in curve.points]
            pts = [(x, y) for x, y in zip(updates, ys) if y is not None]
            if pts:
                ax_tpf.plot(*zip(*pts), style, marker="o", color=color, label=f"{curve.label} {where}")
        for key, style in (("train_consistency_loss", "-"), ("train_ar_loss", ":")):
            pts = [(x, _get(p, "", key)) for x, p in zip(updates, curve.points) if _get(p, "", key) is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, marker=".", color=color, label=f"{curve.label} {key[6:-5]}")
    ax_tpf.set_xlabel("optimiser updates")
    ax_tpf.set_ylabel("Jacobi tokens per forward")
    ax_tpf.grid(alpha=0.3)
    ax_tpf.legend(fontsize=7)
    ax_loss.set_xlabel("optimiser updates")
    ax_loss.set_ylabel("training loss (mean since previous point)")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=7)
    title = "Consistency training: Jacobi tokens per forward (held-out vs training prompts) and losses"
    caption = "Solid: held-out prompts; dashed: training prompts. Right: consistency (solid) and AR (dotted) loss."
    return Plot("learning_curves", title, caption, figure_png(fig, banner))
