"""scripts/check_import_cycles.py: the package has no import circle, and the checker finds one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_import_cycles.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_circle():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import circle" in done.stdout


def test_the_checker_finds_a_circle_and_resolves_imports(tmp_path):
    checker = _checker()
    assert checker.circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert checker.circles({"a": {"b"}, "b": set()}) == []
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import other\n"
        "def f():\n    from ..other import thing\n"
    )
    (pkg / "other.py").write_text("import pkg.sub.leaf\n")
    modules = {"pkg", "pkg.sub", "pkg.sub.leaf", "pkg.other"}
    # the parent package is not an edge; the lazy relative import is; the TYPE_CHECKING one is not
    assert checker.imported_modules("pkg.sub", pkg / "sub" / "__init__.py", modules) == {"pkg.sub.leaf"}
    assert checker.imported_modules("pkg.sub.leaf", pkg / "sub" / "leaf.py", modules) == {"pkg.other"}
    assert checker.imported_modules("pkg.other", pkg / "other.py", modules) == {"pkg.sub.leaf"}
