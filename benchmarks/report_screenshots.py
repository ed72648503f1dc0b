"""Screenshots of the HTML report, taken with headless Chromium, for review and the README.

    python benchmarks/report_screenshots.py                  # the sample Verdicts of tests/verdict_samples.py
    python benchmarks/report_screenshots.py --verdict out/verdict.json --name real-run

Each report is rendered to a temporary file, shot in a tall 1280-pixel-wide
window, and the empty page background below the footer is trimmed, so the PNG
in ``benchmarks/screenshots/`` shows the whole page.

With the samples, the three outcomes a reader must never confuse (a clean
pass, a pass that rests on purification, a block) are also shot as the first
screen a browser shows (1280 x 720, ``report-first-screen-NAME.png``) and put
side by side in ``report-outcomes-at-a-glance.png``: banner colour, word and
icon must tell them apart before anything is read.
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

DEFAULT_SAMPLES = ("clean-pass", "backdoored-purified", "purification-missed", "blocked-unsafe")
OUTCOMES = ("clean-pass", "backdoored-purified", "purification-missed")
"""A clean pass, a purified pass and a block, in the order the side-by-side picture shows them."""
WIDTH = 1280
TALL = 9000
FIRST_SCREEN = 720
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


def shoot(html: Path, png: Path, height: int = TALL, *, trim: bool = True) -> None:
    """Screenshot ``html`` into ``png`` in a WIDTH x ``height`` window, then trim the blank bottom."""
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--window-size={WIDTH},{height}", f"--screenshot={png}",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    if trim:
        trim_bottom(png)
    else:
        _store(png)


def _store(png: Path) -> None:
    """Re-save ``png`` with 256 colours, as every committed screenshot is."""
    from PIL import Image

    with Image.open(png) as image:
        image.convert("RGB").quantize(colors=256).save(png, optimize=True)


def side_by_side(pngs: list[Path], out: Path, gap: int = 24) -> None:
    """The first screens of ``pngs`` next to each other at half size, on the page background."""
    from PIL import Image

    shots = []
    for png in pngs:
        with Image.open(png) as image:
            shots.append(image.convert("RGB").resize((image.width // 2, image.height // 2), Image.LANCZOS))
    width = sum(s.width for s in shots) + gap * (len(shots) + 1)
    height = max(s.height for s in shots) + 2 * gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    x = gap
    for shot in shots:
        canvas.paste(shot, (x, gap))
        x += shot.width + gap
    canvas.quantize(colors=256).save(out, optimize=True)


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
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, verdict in verdicts.items():
            page = Path(scratch) / f"{name}.html"
            page.write_text(render(verdict, "html"), encoding="utf-8")
            shoot(page, args.out / f"report-{name}.png")
            written.append(args.out / f"report-{name}.png")
            if not args.verdict and name in OUTCOMES:
                shoot(page, args.out / f"report-first-screen-{name}.png", FIRST_SCREEN, trim=False)
                written.append(args.out / f"report-first-screen-{name}.png")
    if not args.verdict and all(name in verdicts for name in OUTCOMES):
        glance = args.out / "report-outcomes-at-a-glance.png"
        side_by_side([args.out / f"report-first-screen-{name}.png" for name in OUTCOMES], glance)
        written.append(glance)
    for png in written:
        print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")


if __name__ == "__main__":
    main()
