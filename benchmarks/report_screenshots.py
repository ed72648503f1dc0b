"""Screenshots of the HTML report, taken with headless Chromium, for review and the README.

    python benchmarks/report_screenshots.py                  # the sample Verdicts of tests/verdict_samples.py
    python benchmarks/report_screenshots.py --verdict out/verdict.json --name real-run

Each report is rendered to a temporary file, shot in a tall 1280-pixel-wide
window, and the empty page background below the footer is trimmed, so the PNG
in ``benchmarks/screenshots/`` shows the whole page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cbpt_guard.report import read_verdict, render  # noqa: E402
from tests import verdict_samples  # noqa: E402

DEFAULT_SAMPLES = ("backdoored-purified", "clean-pass")
WIDTH = 1280
TALL = 9000
BACKGROUND = (246, 248, 250)  # the page's --bg colour
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars")


def chromium() -> str:
    """The Chromium executable, or exit with a message naming the package to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("report_screenshots: no chromium on PATH (Debian: apt-get install chromium)")


def shoot(html: Path, png: Path, height: int = TALL) -> None:
    """Screenshot ``html`` into ``png`` in a WIDTH x ``height`` window, then trim the blank bottom."""
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--window-size={WIDTH},{height}", f"--screenshot={png}",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    trim_bottom(png)


def trim_bottom(png: Path, margin: int = 24) -> None:
    """Cut the rows of plain page background below the content (keeping ``margin``), and store 256 colours."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = rgb.load()
    bottom = height
    while bottom > 1 and all(pixels[x, bottom - 1] == BACKGROUND for x in range(0, width, 4)):
        bottom -= 1
    # 256 colours are plenty for a page of text and flat charts, and keep the committed PNGs small.
    rgb.crop((0, 0, width, min(bottom + margin, height))).quantize(colors=256).save(png, optimize=True)


def main(argv: list[str] | None = None) -> None:
    """Render the chosen Verdicts and screenshot each into the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "screenshots")
    parser.add_argument("--samples", nargs="*", default=list(DEFAULT_SAMPLES),
                        choices=sorted(verdict_samples.ALL), help="Sample Verdicts to shoot.")
    parser.add_argument("--verdict", type=Path, help="Shoot a saved verdict.json instead of the samples.")
    parser.add_argument("--name", default="verdict", help="File name (without .png) for --verdict.")
    args = parser.parse_args(argv)
    if args.verdict:
        verdicts = {args.name: read_verdict(args.verdict)}
    else:
        verdicts = {name: verdict_samples.ALL[name]() for name in args.samples}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, verdict in verdicts.items():
            page = Path(scratch) / f"{name}.html"
            page.write_text(render(verdict, "html"), encoding="utf-8")
            png = args.out / f"report-{name}.png"
            shoot(page, png)
            print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")


if __name__ == "__main__":
    main()
