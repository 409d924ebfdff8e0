"""scripts/curves_table.py: Markdown tables of learning curves, read from manifests as written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "curves_table.py"


def load():
    spec = importlib.util.spec_from_file_location("curves_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def point(update, tpf, match, cons=None):
    return {"update": update, "train_consistency_loss": cons, "train_ar_loss": None,
            "train": {"tokens_per_forward": tpf, "fast_forwarded": 1.1, "stationary": 0.5, "match_base": match}}


def test_summary_and_points(tmp_path, capsys):
    manifest = {"updates": 80, "lr": 1e-4, "consistency_window": 3, "settings": {"epochs": 10},
                "curve": [point(0, 1.0, 1.0), point(40, 1.25, 1.0, 4.0), point(80, 1.5, 0.75, 2.0)]}
    path = tmp_path / "manifest-window3.json"
    path.write_text(json.dumps(manifest))
    assert load().main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| window3 | 80 | 1.000 → 1.500 | 1.50x |" in out and "| 0.75 | 4.00 → 2.00 |" in out
    assert "consistency_window=3" in out and "epochs=10" in out
    assert "| 40 | 1.250 | 1.00 | 4.00 | — |" in out
    assert "held-out" not in out  # no held-out set in these curves


def test_unreadable_manifest_exits_2(tmp_path, capsys):
    bad = tmp_path / "manifest-x.json"
    bad.write_text("{")
    assert load().main([str(bad)]) == 2 and "cannot read" in capsys.readouterr().err
    assert load().main([]) == 2
