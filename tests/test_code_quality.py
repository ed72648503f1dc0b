"""The code's own rules, checked on every test run: one-way imports (import-linter) and ruff's lint rules.

Both tools come with the ``test`` extra and their settings live in pyproject.toml, so ``make test`` (what CI
runs) fails as soon as a change makes a stage import upward or adds an import cycle across layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Both run under this interpreter, so they are the versions the ``test`` extra installed here.
LINT_IMPORTS = [sys.executable, "-c",
                "import sys; from importlinter.cli import lint_imports_command as run; sys.exit(run())"]
RUFF = [sys.executable, "-m", "ruff"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # the tree under test, not whatever copy of cbpt_guard the environment has installed
    env = os.environ | {"PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_imports_keep_the_layers_of_pyproject_contracts():
    done = _run(LINT_IMPORTS, ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_ruff_finds_nothing_in_the_packages_tests_or_benchmarks():
    done = _run([*RUFF, "check", "--no-cache", "cbpt_guard", "cbpt_guard_zoo", "tests", "benchmarks"], ROOT)

    assert done.returncode == 0, done.stdout + done.stderr


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    for package in ("cbpt_guard", "cbpt_guard_zoo"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    intake = tmp_path / "cbpt_guard" / "intake" / "__init__.py"
    intake.write_text(intake.read_text() + "\n\ndef _upward():\n    from cbpt_guard.pipeline import check  # noqa\n")

    done = _run(LINT_IMPORTS, tmp_path)

    assert done.returncode != 0, done.stdout
    assert "cbpt_guard.intake is not allowed to import cbpt_guard.pipeline" in done.stdout


def test_the_product_importing_the_zoo_breaks_the_forbidden_contract(tmp_path):
    for package in ("cbpt_guard", "cbpt_guard_zoo"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    main = tmp_path / "cbpt_guard" / "cli" / "main.py"
    main.write_text(main.read_text() + "\n\ndef _zoo():\n    from cbpt_guard_zoo.cli import zoo_group  # noqa\n")

    done = _run(LINT_IMPORTS, tmp_path)

    assert done.returncode != 0, done.stdout
    assert "cbpt_guard.cli.main -> cbpt_guard_zoo.cli" in done.stdout
