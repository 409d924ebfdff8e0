#!/usr/bin/env python
"""Screenshot a `cllm-bench report` HTML file into a small PNG for the docs.

Renders the page with headless Chromium (``apt-get install -y chromium``), keeps the top
``--crop-height`` pixels, scales it to at most ``--max-width`` pixels wide and writes a
palette PNG; stops with an error when the result is larger than ``--max-kb``.

The README and docs figures were made with:

    python scripts/screenshot_report.py results/reproduce-gsm8k/report.html \\
        docs/report-screenshot-gsm8k.png --crop-height 1245
    python scripts/make_report_fixture.py --out /tmp/report-demo --single
    python scripts/screenshot_report.py /tmp/report-demo/report/report.html \\
        docs/report-screenshot-synthetic.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def find_chromium() -> str:
    """Path of the Chromium executable; raises SystemExit with the install hint if none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium on PATH: apt-get install -y chromium")


def render(html: Path, png: Path, width: int, height: int, chromium: str) -> None:
    """Let headless Chromium render ``html`` at ``width`` x ``height`` into ``png``."""
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise SystemExit(f"chromium wrote no screenshot for {html}")


def shrink(source: Path, target: Path, crop_height: int, max_width: int) -> int:
    """Crop ``source`` to its top ``crop_height`` rows, scale to ``max_width``, save as a
    256-colour PNG at ``target``; return the file size in bytes."""
    with Image.open(source) as image:
        img = image.convert("RGB")
    img = img.crop((0, 0, img.width, min(crop_height, img.height)))
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    target.parent.mkdir(parents=True, exist_ok=True)
    img.save(target, format="PNG", optimize=True)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="report.html written by `cllm-bench report`")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--window-size", default="1400,2000", help="browser viewport WIDTH,HEIGHT in pixels")
    parser.add_argument("--crop-height", type=int, default=2000, help="keep this many pixels from the top")
    parser.add_argument("--max-width", type=int, default=1200, help="scale down to at most this width")
    parser.add_argument("--max-kb", type=int, default=400, help="fail when the PNG is larger than this")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        raise SystemExit(f"{args.html}: no such file")
    width, height = (int(v) for v in args.window_size.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        render(args.html, raw, width, height, find_chromium())
        size = shrink(raw, args.out, args.crop_height, args.max_width)
    print(f"{args.out}: {size / 1024:.0f} KB")
    if size > args.max_kb * 1024:
        print(f"larger than {args.max_kb} KB: lower --crop-height or --max-width", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
