"""The CLI: start-up without torch, lazy commands, and every exit code through click's runner."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard import __version__
from cbpt_guard.cli.main import COMMANDS, cli
from cbpt_guard.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["inspect", "--help"]])
def test_start_up_does_not_import_torch(args):
    code = (
        "import sys\n"
        "from cbpt_guard.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'numpy', 'onnxruntime') if m in sys.modules)\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("HEAVY:"), result.stdout


def test_version_is_printed():
    result = _run("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_registered_command_resolves(name):
    result = _run(name, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+)\|", readme, flags=re.M))
    assert sorted(int(code) for code in rows) == sorted(int(code) for code in ExitCode)


# --- one test per exit code -------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, config = build_tiny("vit")
    return save_open_clip_dir(model, config, tmp_path_factory.mktemp("model"), "safetensors",
                              classes=["circle", "square"])


def test_exit_0_when_a_clean_checkpoint_is_inspected(model_dir):
    result = _run("inspect", str(model_dir))
    assert result.exit_code == ExitCode.PASS, result.output
    assert "VisionTransformer" in result.output and "2 from" in result.output


def test_inspect_json_is_machine_readable(model_dir):
    result = _run("inspect", str(model_dir), "--json")
    assert result.exit_code == ExitCode.PASS
    report = json.loads(result.output)
    assert report["class_count"] == 2 and len(report["checkpoint_sha256"]) == 64


class _Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_exit_1_when_a_pickle_would_run_code(tmp_path, model_dir):
    sentinel = tmp_path / "pwned"
    target = tmp_path / "model"
    target.mkdir()
    for item in model_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    (target / "open_clip_model.safetensors").unlink()
    (target / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(sentinel)}, protocol=2))

    result = _run("inspect", str(target))

    assert result.exit_code == ExitCode.BLOCKED, result.output
    assert "system" in result.output
    assert not sentinel.exists()


def test_a_loose_pickle_without_arch_is_refused_as_unsafe_not_as_a_usage_error(tmp_path, model_dir):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"w": _Payload(sentinel)}, protocol=2))
    plain = tmp_path / "weights.safetensors"
    plain.write_bytes((model_dir / "open_clip_model.safetensors").read_bytes())

    refused = _run("inspect", str(evil))
    asked = _run("inspect", str(plain))

    assert refused.exit_code == ExitCode.BLOCKED, refused.output
    assert "system" in refused.output and "--arch" not in refused.output
    assert not sentinel.exists()
    assert asked.exit_code == ExitCode.USAGE, asked.output
    assert "needs --arch" in asked.output


def test_exit_2_on_an_internal_error(monkeypatch, model_dir):
    import cbpt_guard.intake.loader as loader

    def broken(*args, **kwargs):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(loader, "load_checkpoint", broken)
    result = _run("inspect", str(model_dir))
    assert result.exit_code == ExitCode.TOOL_ERROR
    assert "internal error: RuntimeError: simulated fault" in result.output
    assert "Traceback" not in result.output


def test_exit_3_when_nothing_is_scannable(tmp_path):
    (tmp_path / "README.md").write_text("no model here")
    result = _run("inspect", str(tmp_path))
    assert result.exit_code == ExitCode.INCONCLUSIVE
    assert "nothing scannable" in result.output and "README.md" in result.output
    assert "nothing found" not in result.output.lower()


@pytest.mark.parametrize(
    "args",
    [["inspect", "--no-such-flag", "."], ["inspect", "/no/such/path"], ["no-such-command"], ["inspect"]],
)
def test_exit_4_on_usage_errors(args):
    result = _run(*args)
    assert result.exit_code == ExitCode.USAGE, result.output


def test_errors_are_one_line(tmp_path):
    result = _run("inspect", str(tmp_path / "absent"))
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("cbpt-guard: error: ")
