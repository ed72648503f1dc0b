"""Rewrite the example outputs in README.md from a real run of the commands README shows.

Usage (from the repository root; it runs two full checks, several minutes on one thread):

    python benchmarks/readme_outputs.py            # run the commands, rewrite README's marked blocks
    python benchmarks/readme_outputs.py --check    # run them, exit 1 where README differs beyond tolerance

Each pasted output in README.md sits between markers, so that nothing in it is
typed by hand:

    <!-- readme-output: strict -->
        BLOCK: examples/backdoored under policy strict (enforce)
        ...
    <!-- /readme-output -->

A block holds what ``cbpt-guard check`` prints on stdout for the command above
it, with the lines naming written files left out (README says so). The same
commands run in tests/test_check_examples.py, which compares its output with
these blocks through :func:`differences`: the text exactly, whole numbers exactly,
and the measured numbers to the precision floating point on another machine
allows (:func:`close`). On the machine that wrote the blocks they match exactly.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL = "examples/backdoored"
PER_CLASS = 40
"""Images per class in the few-shot folder README makes with ``cbpt-guard zoo images --per-class 40``."""
COMMANDS = {name: ["check", MODEL, "--policy", name, "--data", "data/", "--out", "report/"]
            for name in ("strict", "balanced")}
"""The README command of each block, as typed there (``data/`` and ``report/`` are replaced when run)."""
PERCENT_TOLERANCE = 1.0
"""How far a percentage (or a "2.8 points" CA drop) may move between machines, in points."""
RELATIVE_TOLERANCE = 0.05
"""How far another decimal may move, as a share of itself (scores, thresholds, z values)."""
TINY = 1e-3
"""Numbers below this (parity differences such as 1.4e-05) need only stay below it."""

_MARKER = re.compile(r"(<!-- readme-output: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /readme-output -->)", re.S)
_FILE_LINE = re.compile(r"(?:html|markdown|sarif|verdict|onnx|prompts): \S+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_INDENT = "    "


def run_command(name: str, data: Path, out: Path) -> str:
    """Run README's command ``name`` in this process (one thread) with its folders replaced; return its stdout."""
    import torch
    from click.testing import CliRunner

    from cbpt_guard.cli.main import cli

    torch.set_num_threads(1)
    args = [str(data) if a == "data/" else str(out) if a == "report/" else a for a in COMMANDS[name]]
    args = [str(ROOT / MODEL) if a == MODEL else a for a in args]
    return CliRunner().invoke(cli, args).stdout


def block_lines(stdout: str, model_path: str | Path = ROOT / MODEL) -> list[str]:
    """What README shows of a check's stdout: every line but the written files, the model named as README names it."""
    lines = stdout.replace(str(model_path), MODEL).splitlines()
    return [line for line in lines if not _FILE_LINE.fullmatch(line)]


def readme_blocks(text: str | None = None) -> dict[str, list[str]]:
    """README's marked blocks by name, each as its lines without the block's indentation."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return {match["name"]: [line.removeprefix(_INDENT) for line in match["body"].splitlines() if line.strip()]
            for match in _MARKER.finditer(text)}


def rewrite(text: str, blocks: dict[str, list[str]]) -> str:
    """``text`` with each marked block replaced by ``blocks[name]``; a marker with no new block is kept as it is."""
    def replace(match: re.Match) -> str:
        lines = blocks.get(match["name"])
        if lines is None:
            return match.group(0)
        body = "\n" + "".join(f"{_INDENT}{line}\n" for line in lines) + "\n"
        return match.group(1) + body + match.group(4)

    return _MARKER.sub(replace, text)


def close(shown: str, printed: str, percent: bool) -> bool:
    """Whether a printed number is README's ``shown`` one, to the precision another machine allows.

    Whole numbers (exit codes, counts) exactly; percentages within
    :data:`PERCENT_TOLERANCE` points; numbers under :data:`TINY` only stay
    under it; other decimals within :data:`RELATIVE_TOLERANCE` of themselves.
    """
    a, b = float(shown), float(printed)
    if not any(mark in shown + printed for mark in ".eE"):
        return a == b
    if percent:
        return abs(a - b) <= PERCENT_TOLERANCE
    if abs(a) < TINY and abs(b) < TINY:
        return True
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b))


def differences(expected: list[str], actual: list[str]) -> list[str]:
    """Where ``actual`` lines differ from README's ``expected``: the text with numbers blanked exactly, each number
    by :func:`close`. Returns one description per difference; empty when they match."""
    problems = []
    if len(expected) != len(actual):
        problems.append(f"{len(actual)} lines printed, README shows {len(expected)}")
    for index, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        if _NUMBER.sub("#", want) != _NUMBER.sub("#", got):
            problems.append(f"line {index}: printed {got!r}, README shows {want!r}")
            continue
        for a, b in zip(_NUMBER.finditer(want), _NUMBER.finditer(got), strict=True):
            if not close(a[0], b[0], percent=want[a.end():].startswith(("%", " point"))):
                problems.append(f"line {index}: {b[0]} printed where README shows {a[0]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting; exit 1 on a difference")
    args = parser.parse_args(argv)

    from cbpt_guard_zoo.imagefolder import write_image_folder

    text = README.read_text(encoding="utf-8")
    shown = readme_blocks(text)
    missing = sorted(set(COMMANDS) - set(shown))
    if missing:
        print(f"README.md has no readme-output block for {', '.join(missing)}", file=sys.stderr)
        return 2
    printed = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_image_folder(data, per_class=PER_CLASS)
        for name in COMMANDS:
            print(f"running: cbpt-guard {' '.join(COMMANDS[name])}", file=sys.stderr, flush=True)
            printed[name] = block_lines(run_command(name, data, Path(tmp) / f"report-{name}"))
    if args.check:
        problems = [f"{name}: {p}" for name in COMMANDS for p in differences(shown[name], printed[name])]
        print("\n".join(problems) or "README outputs match", file=sys.stderr)
        return 1 if problems else 0
    README.write_text(rewrite(text, printed), encoding="utf-8")
    print(f"rewrote {', '.join(COMMANDS)} in {README.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
