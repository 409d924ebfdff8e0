"""Markdown tables of the learning curves in ``train cllm`` manifests (issue 16's ablations).

    python scripts/curves_table.py results/cllm-spider-ablations/manifest-*.json > curves.md

Per manifest (named by the part of its file name after ``manifest-``): one summary row
(what the variant changed, updates, and per curve set the first and last point's Jacobi
tokens per forward, their ratio, fast-forwarded, stationary and match_base), then every
curve point. Numbers are read from the manifests as written; nothing is recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SETTINGS = ("lr", "ar_weight", "consistency", "consistency_window", "packed", "states_per_block", "n", "max_prompts", "epochs")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def variant_name(path: Path) -> str:
    return path.stem.removeprefix("manifest-")


def settings_of(manifest: dict[str, Any]) -> str:
    merged = {**manifest.get("settings", {}), **manifest}
    return ", ".join(f"{k}={merged[k]}" for k in SETTINGS if merged.get(k) is not None)


def summary_rows(manifests: dict[str, dict[str, Any]], set_name: str) -> list[str]:
    rows = [f"| variant | updates | {set_name} tok/fwd first → last | ratio | fast-forwarded | stationary | match_base (last) | training consistency loss (first → last point) |",
            "| --- | ---: | --- | ---: | --- | --- | ---: | --- |"]
    for name, m in manifests.items():
        curve = [p for p in m.get("curve") or [] if set_name in p]
        if not curve:
            continue
        first, last = curve[0][set_name], curve[-1][set_name]
        ratio = last["tokens_per_forward"] / first["tokens_per_forward"] if first.get("tokens_per_forward") else None
        losses = [p.get("train_consistency_loss") for p in curve if p.get("train_consistency_loss") is not None]
        rows.append(
            f"| {name} | {m.get('updates')} | {fmt(first.get('tokens_per_forward'))} → {fmt(last.get('tokens_per_forward'))} "
            f"| {fmt(ratio, 2)}x | {fmt(first.get('fast_forwarded'), 2)} → {fmt(last.get('fast_forwarded'), 2)} "
            f"| {fmt(first.get('stationary'), 2)} → {fmt(last.get('stationary'), 2)} | {fmt(last.get('match_base'), 2)} "
            f"| {fmt(losses[0] if losses else None, 2)} → {fmt(losses[-1] if losses else None, 2)} |"
        )
    return rows


def point_rows(name: str, manifest: dict[str, Any]) -> list[str]:
    sets = [s for s in ("train", "heldout") if any(s in p for p in manifest.get("curve") or [])]
    head = "| update | " + " | ".join(f"{s} tok/fwd | {s} match_base" for s in sets) + " | consistency loss | AR loss |"
    rows = [f"### {name}", "", f"settings: {settings_of(manifest)}", "", head, "| ---: |" + " ---: |" * (2 * len(sets) + 2)]
    for p in manifest.get("curve") or []:
        cells = []
        for s in sets:
            cells += [fmt(p.get(s, {}).get("tokens_per_forward")), fmt(p.get(s, {}).get("match_base"), 2)]
        rows.append(f"| {p['update']} | " + " | ".join(cells)
                    + f" | {fmt(p.get('train_consistency_loss'), 2)} | {fmt(p.get('train_ar_loss'), 2)} |")
    return rows + [""]


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: curves_table.py MANIFEST.json...", file=sys.stderr)
        return 2
    manifests: dict[str, dict[str, Any]] = {}
    for raw in paths:
        path = Path(raw)
        try:
            manifests[variant_name(path)] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{path}: cannot read a manifest ({exc})", file=sys.stderr)
            return 2
    lines = ["# Learning curves", "", "## Summary: the trained prompts", ""] + summary_rows(manifests, "train")
    held = summary_rows(manifests, "heldout")
    if len(held) > 2:
        lines += ["", "## Summary: held-out prompts", ""] + held
    lines += ["", "## Every curve point", ""]
    for name, m in manifests.items():
        lines += point_rows(name, m)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
