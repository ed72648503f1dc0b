"""The zoo is an optional package: `cbpt-guard zoo` comes through an entry point, and without it says how to get it.

The entry point is the one pyproject.toml declares, read from the file, so these tests hold whatever metadata the
environment they run in was installed with (an editable install made before the entry point existed included).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from cbpt_guard.cli import optional
from cbpt_guard.cli.main import cli
from cbpt_guard.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_INSTALL = "install it with pip install 'cbpt-guard[zoo]'"


def _declared_entry_points() -> list[EntryPoint]:
    """The `cbpt_guard.commands` entry points pyproject.toml registers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][optional.ENTRY_POINT_GROUP]
    return [EntryPoint(name=name, value=value, group=optional.ENTRY_POINT_GROUP) for name, value in declared.items()]


@pytest.fixture
def declared(monkeypatch):
    """The CLI sees the entry points pyproject.toml declares (as a `pip install .` registers them)."""
    points = _declared_entry_points()
    monkeypatch.setattr(optional, "registered", lambda name: [p for p in points if p.name == name])


@pytest.fixture
def without_scikit_learn(monkeypatch, declared):
    """An install without the zoo extra: scikit-learn cannot be imported, and the zoo's command is loaded anew."""
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.delitem(sys.modules, "cbpt_guard_zoo.cli", raising=False)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("args", [["zoo", "build", "--out", "OUT", "--config", "vit-tiny"], ["zoo", "--help"],
                                  ["zoo", "images", "--out", "OUT"], ["zoo"]])
def test_zoo_without_its_extra_says_in_one_line_how_to_install_it(without_scikit_learn, tmp_path, args):
    out = tmp_path / "zoo"
    result = _run(*[str(out) if a == "OUT" else a for a in args])

    assert result.exit_code == ExitCode.USAGE, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("cbpt-guard: error: `cbpt-guard zoo` is an optional part and sklearn is not installed")
    assert lines[0].endswith(HOW_TO_INSTALL)
    assert not out.exists()


def test_zoo_not_registered_at_all_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(optional, "registered", lambda name: [])

    result = _run("zoo", "images", "--out", str(tmp_path / "images"))

    assert result.exit_code == ExitCode.USAGE
    assert result.output.strip() == f"cbpt-guard: error: `cbpt-guard zoo` is an optional part and it is not " \
                                    f"installed: {HOW_TO_INSTALL}"


def test_zoo_with_its_extra_runs_the_zoo_packages_command(declared, tmp_path):
    out = tmp_path / "images"

    result = _run("zoo", "images", "--out", str(out), "--per-class", "1")

    assert result.exit_code == 0, result.output
    assert f"wrote 22 images to {out}" in result.output
    assert len(list(out.rglob("*.png"))) == 22


def test_the_declared_entry_point_is_the_zoo_group():
    from cbpt_guard_zoo.cli import zoo_group

    (point,) = _declared_entry_points()
    assert point.name == "zoo"
    assert point.load() is zoo_group
    assert set(zoo_group.commands) == {"build", "measure", "images"}


def test_help_lists_zoo_without_importing_it_or_torch():
    code = (
        "import sys\n"
        "from cbpt_guard.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "print('LOADED:' + ','.join(sorted(m for m in ('torch', 'cbpt_guard_zoo') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "zoo        Build the zoo of clean and backdoored models (the [zoo] extra)." in result.stdout
    assert result.stdout.strip().endswith("LOADED:"), result.stdout
