"""scripts/screenshot_report.py: the Pillow half (crop, scale, palette PNG, size limit).

The Chromium half needs a browser and is exercised only when one is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


def test_shrink_crops_scales_and_writes_a_palette_png(tmp_path: Path) -> None:
    source = tmp_path / "raw.png"
    image = Image.new("RGB", (1400, 2000), "white")
    image.paste((200, 30, 30), (0, 1500, 1400, 2000))  # a red band below the crop line
    image.save(source)
    target = tmp_path / "out" / "shot.png"
    size = SCRIPT.shrink(source, target, crop_height=1000, max_width=700)
    assert size == target.stat().st_size
    with Image.open(target) as out:
        assert out.size == (700, 500)
        assert out.mode == "P"
        assert (200, 30, 30) not in {rgb for _, rgb in out.convert("RGB").getcolors(1 << 16)}


def test_main_refuses_a_missing_html(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        SCRIPT.main([str(tmp_path / "nope.html"), str(tmp_path / "x.png")])


@pytest.mark.skipif(not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")), reason="no chromium")
def test_main_renders_html_under_the_size_limit(tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    html.write_text("<!DOCTYPE html><html><body><h1>cllm-bench report</h1></body></html>", encoding="utf-8")
    out = tmp_path / "r.png"
    assert SCRIPT.main([str(html), str(out), "--window-size", "800,600", "--crop-height", "300"]) == 0
    with Image.open(out) as image:
        assert image.size == (800, 300)
