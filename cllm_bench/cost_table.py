"""Cost tables: the time of one forward on one device, by width, context and batch size.

Written by ``cllm-bench profile`` (:mod:`cllm_bench.cost_profile`) or derived from other
measurements (``results/cost_tables/``), read by ``cllm-bench predict``. JSON layout
(``format: "cllm-bench-cost-table/1"``)::

    {"format": ..., "device": "cpu", "device_name": ..., "dtype": "float32",
     "engine": "dynamic" | "static" | "static+compile", "repeats": 3, "calls": 5,
     "provenance": {...},                     # versions, command, time; "derived": how, if derived
     "target": MODEL, "drafts": {spec: MODEL, ...},
     "heads": {spec: {"name": spec, "call_ms": float, "spread_ms": float | null}, ...}}

    MODEL = {"name": spec, "identity": {hidden_size, num_hidden_layers, vocab_size, ...},
             "step_overhead_ms": float, "step_overhead_spread_ms": float | null,
             "grids": [GRID, ...]}
    GRID  = {"batch": 1, "tree": false, "widths": [w...], "contexts": [c...],
             "ms": [[...per width...] per context], "spread_ms": same shape or null}

``ms[i][j]`` is the median time of one forward of ``widths[j]`` tokens against
``contexts[i]`` cached positions (device synchronised; host work of the forward call
included); ``spread_ms`` is max - min over the repeats. ``heads`` (Medusa heads, keyed by
the ``medusa:heads=`` spec): the time of one call of the heads on one hidden state. ``step_overhead_ms`` is the host
time a decode step of our loop adds to its forward (a full ``ar`` step minus the bare
1-token forward).

Interpolation (:meth:`Grid.cost`): piecewise linear in width, then linear in context, over
the profiled points (bilinear on the grid). Outside the profiled range the nearest segment
is extended linearly (a single profiled point: held constant; above the range never
below the last profiled cost) and the lookup is flagged ``extrapolated``; costs are
floored at 0.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cllm_bench.errors import UserError
from cllm_bench.results_io import read_json, write_json_file

FORMAT = "cllm-bench-cost-table/1"

#: identity fields that must agree between a run's model and a cost table's target
MATCH_FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size")


def interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> tuple[float, bool]:
    """Piecewise-linear ``y(x)`` through the points ``(xs[i], ys[i])`` (``xs`` strictly
    increasing, len >= 1). Returns ``(y, extrapolated)``; outside ``[xs[0], xs[-1]]`` the
    end segment is extended (one point: constant), and above ``xs[-1]`` never below
    ``ys[-1]`` (a larger block or cache never costs less than the largest profiled one;
    a falling last segment is timing noise)."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("interpolate needs as many ys as xs, at least one")
    outside = x < xs[0] or x > xs[-1]
    if len(xs) == 1:
        return float(ys[0]), outside
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    y = float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return (max(y, float(ys[-1])) if x > xs[-1] else y), outside


@dataclass(frozen=True)
class Grid:
    """Forward times of one (batch size, mask kind) over widths x contexts (module docstring)."""

    batch: int
    tree: bool
    widths: tuple[int, ...]
    contexts: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    spread_ms: tuple[tuple[float, ...], ...] | None = None

    def cost(self, width: float, context: float) -> tuple[float, bool]:
        """(ms of one forward, extrapolated) at ``width`` tokens against ``context`` positions."""
        along_width = [interpolate(width, self.widths, row) for row in self.ms]
        outside_w = along_width[0][1]
        ms, outside_c = interpolate(context, self.contexts, [v for v, _ in along_width])
        return max(ms, 0.0), outside_w or outside_c

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "tree": self.tree, "widths": list(self.widths), "contexts": list(self.contexts),
                "ms": [list(r) for r in self.ms], "spread_ms": None if self.spread_ms is None else [list(r) for r in self.spread_ms]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "Grid":
        try:
            grid = cls(batch=int(d["batch"]), tree=bool(d.get("tree", False)),
                       widths=tuple(int(w) for w in d["widths"]), contexts=tuple(int(c) for c in d["contexts"]),
                       ms=tuple(tuple(float(v) for v in row) for row in d["ms"]),
                       spread_ms=None if d.get("spread_ms") is None else tuple(tuple(float(v) for v in r) for r in d["spread_ms"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: malformed grid ({exc}); regenerate it with `cllm-bench profile`") from None
        if not grid.widths or not grid.contexts:
            raise UserError(f"{where}: a grid without widths or contexts")
        if list(grid.widths) != sorted(set(grid.widths)) or list(grid.contexts) != sorted(set(grid.contexts)):
            raise UserError(f"{where}: widths and contexts must be strictly increasing")
        if len(grid.ms) != len(grid.contexts) or any(len(r) != len(grid.widths) for r in grid.ms):
            raise UserError(f"{where}: ms must hold one row per context, one value per width")
        return grid


@dataclass(frozen=True)
class ModelCosts:
    """Everything profiled for one model (target or draft) on one device."""

    name: str
    identity: dict[str, Any]
    step_overhead_ms: float
    grids: tuple[Grid, ...]
    step_overhead_spread_ms: float | None = None

    def grid(self, batch: int, tree: bool) -> tuple[Grid, bool]:
        """The grid for ``batch`` and mask kind; ``(grid, substituted)`` where substituted
        means no tree grid exists and the chain grid stands in for it."""
        for g in self.grids:
            if g.batch == batch and g.tree == tree:
                return g, False
        if tree:
            chain, _ = self.grid(batch, False)
            return chain, True
        have = sorted({g.batch for g in self.grids})
        raise UserError(f"cost table of {self.name} has no batch size {batch} (profiled: {have}); "
                        f"profile it with `cllm-bench profile --batch-sizes {batch}`")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity, "step_overhead_ms": self.step_overhead_ms,
                "step_overhead_spread_ms": self.step_overhead_spread_ms, "grids": [g.to_dict() for g in self.grids]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ModelCosts":
        if not isinstance(d, dict) or not isinstance(d.get("grids"), list) or not d["grids"]:
            raise UserError(f"{where}: no grids; regenerate it with `cllm-bench profile`")
        try:
            overhead = float(d["step_overhead_ms"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: step_overhead_ms missing or not a number") from None
        spread = d.get("step_overhead_spread_ms")
        return cls(name=str(d.get("name", "")), identity=dict(d.get("identity") or {}), step_overhead_ms=overhead,
                   grids=tuple(Grid.from_dict(g, f"{where} grid {i}") for i, g in enumerate(d["grids"])),
                   step_overhead_spread_ms=None if spread is None else float(spread))  # fmt: skip


@dataclass(frozen=True)
class HeadCost:
    """One call of a decoder's heads (Medusa) on one hidden state: median ms and spread."""

    name: str
    call_ms: float
    spread_ms: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "HeadCost":
        try:
            spread = d.get("spread_ms")
            return cls(str(d.get("name", "")), float(d["call_ms"]), None if spread is None else float(spread))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UserError(f"{where}: call_ms missing or not a number") from None


@dataclass(frozen=True)
class CostTable:
    """A device's cost table: the target model and any draft models (keyed by draft spec)."""

    device: str
    device_name: str
    dtype: str
    engine: str
    target: ModelCosts
    drafts: dict[str, ModelCosts] = field(default_factory=dict)
    heads: dict[str, HeadCost] = field(default_factory=dict)
    repeats: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def label(self) -> str:
        return f"{self.device_name} · {self.dtype} · {self.engine}"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "device_name": self.device_name, "dtype": self.dtype,
                "engine": self.engine, "repeats": self.repeats, "provenance": self.provenance,
                "target": self.target.to_dict(), "drafts": {k: v.to_dict() for k, v in self.drafts.items()},
                "heads": {k: asdict(v) for k, v in self.heads.items()}}  # fmt: skip

    def write(self, path: Path, flag: str = "--output") -> None:
        write_json_file(path, self.to_dict(), flag)

    def check_model(self, identity: dict[str, Any], where: str) -> None:
        """Raise :class:`UserError` when ``identity`` (a run's model) differs from the target
        in any of :data:`MATCH_FIELDS` both sides know."""
        diff = [f"{k} {identity[k]} vs {self.target.identity[k]}" for k in MATCH_FIELDS
                if k in identity and k in self.target.identity and identity[k] != self.target.identity[k]]  # fmt: skip
        if diff:
            raise UserError(f"cost table {self.path or ''} is for another model than {where} "
                            f"({'; '.join(diff)} in the run vs the table); profile this model with "
                            f"`cllm-bench profile --models <model>`")  # fmt: skip


def load_cost_table(path: Path) -> CostTable:
    """Read and validate a cost table; :class:`UserError` naming the problem otherwise."""
    data = read_json(Path(path), "cost table")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a cost table (format {FORMAT!r} expected); write one with `cllm-bench profile`")
    drafts, heads = data.get("drafts") or {}, data.get("heads") or {}
    if not isinstance(drafts, dict) or not isinstance(heads, dict):
        raise UserError(f"{path}: drafts and heads must be objects keyed by spec")
    return CostTable(
        device=str(data.get("device", "")), device_name=str(data.get("device_name", data.get("device", ""))),
        dtype=str(data.get("dtype", "")), engine=str(data.get("engine", "")),
        target=ModelCosts.from_dict(data.get("target"), f"{path} target"),
        drafts={str(k): ModelCosts.from_dict(v, f"{path} draft {k}") for k, v in drafts.items()},
        heads={str(k): HeadCost.from_dict(v, f"{path} heads {k}") for k, v in heads.items()},
        repeats=data.get("repeats"), provenance=dict(data.get("provenance") or {}), path=str(path),
    )  # fmt: skip
