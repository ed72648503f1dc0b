"""``check``'s inputs are checked before detection, and a missing onnxruntime never blocks a clean model.

The clean model is a tiny random one scored against a calibration fitted on
itself at the test policy's budget, so its detection is cheap and comes back
"no evidence"; the folder checks run on the bundled clean example and must end
before its (minutes-long) detection would start.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.pipeline import check, detect_budget

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CLEAN_EXAMPLE = REPO / "examples" / "clean"
TODAY = dt.date(2026, 1, 15)
CLASSES = ["circle", "square", "triangle"]
POLICY = """\
version: 1
mode: enforce
detection:
  budget: {steps: 10, batch_size: 16, time_limit_s: 600, targeted_classes: 1}
  families: [patch, additive, warp]
  calibration: tiny-cal.json
evidence: {on_backdoor: block, on_required_skipped: inconclusive, on_stage_failure: block}
export: {enabled: true}
"""


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A tiny clean model and a policy whose calibration was fitted on it, at the policy's own budget."""
    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.policy import load_policy

    model, config = build_tiny("vit", seed=5)
    directory = save_open_clip_dir(model, config, tmp_path_factory.mktemp("clean"), "safetensors", classes=CLASSES)
    folder = tmp_path_factory.mktemp("policy")
    policy = folder / "tiny.yaml"
    policy.write_text(POLICY)
    calibration = calibrate_models([directory], budget=detect_budget(load_policy(policy)))
    (folder / "tiny-cal.json").write_text(calibration.to_json())
    return directory, policy


def _image_folder(root: Path, names: list[str], per_class: int = 2) -> Path:
    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for shot in range(per_class):
            Image.new("RGB", (32, 32), (40 * index, 90, 20 * shot)).save(root / name / f"{shot}.png")
    return root


def _without_onnxruntime(monkeypatch, tmp_path: Path) -> None:
    """Make ``import onnxruntime`` fail here and in every child process, as on a machine without it."""
    fake = tmp_path / "no-onnxruntime"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text('raise ImportError("No module named \'onnxruntime\'")\n')
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{os.environ.get('PYTHONPATH', '')}")
    for name in [n for n in sys.modules if n == "onnxruntime" or n.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)


def _must_not_run(*args, **kwargs):
    raise AssertionError("detection ran before the inputs were checked")


# -- onnxruntime: a core dependency, and its absence an inconclusive export ------------------------------------


def test_onnxruntime_is_a_core_dependency_the_pre_commit_hook_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(dep.split(">")[0].strip() == "onnxruntime" for dep in project["dependencies"])
    assert any(dep.startswith("onnxruntime-gpu") for dep in project["optional-dependencies"]["gpu"])
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    # `language: python` pip-installs the repository, so the package's own dependencies come with it
    assert all(hook["language"] == "python" for hook in hooks)


def test_a_clean_model_without_onnxruntime_is_inconclusive_not_blocked(clean, tmp_path, monkeypatch):
    model, policy = clean
    data = _image_folder(tmp_path / "data", CLASSES)
    reported = []
    passed = check(model, policy=policy, out_dir=tmp_path / "with", data=data, today=TODAY, progress=reported.append)
    assert passed.decision.action == "pass" and passed.export.passed, passed.decision.reasons
    assert passed.data.tier == "few-shot"  # a loaded labelled set, not just a folder name
    export = [str(e) for e in reported if getattr(e, "stage", "").startswith("export")]
    assert export[-1].startswith("export: ONNX trace and parity check: step 2/2 (100%)") and "ETA" in export[-1]

    _without_onnxruntime(monkeypatch, tmp_path)
    verdict = check(model, policy=policy, out_dir=tmp_path / "without", today=TODAY)
    assert verdict.decision.action == "inconclusive" and verdict.decision.exit_code == 3
    export = next(step for step in verdict.steps if step.name == "export")
    assert export.state == "skipped" and export.required and "onnxruntime is not installed" in export.reason
    assert verdict.detection.outcome == "no evidence of a backdoor found"


# -- --data and --probes are checked before detection ----------------------------------------------------------


def _check_example(monkeypatch, *flags: str):
    from cbpt_guard.detect import run

    monkeypatch.setattr(run, "gather_evidence", _must_not_run)
    return CliRunner().invoke(cli, ["check", str(CLEAN_EXAMPLE), "--policy", "strict", *flags])


def _errors(result) -> list[str]:
    """The error lines of a run's stderr (the rest is progress)."""
    return [line for line in result.stderr.splitlines() if line.startswith("cbpt-guard:")]


def test_an_empty_data_folder_is_a_usage_error_before_detection(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    result = _check_example(monkeypatch, "--data", str(tmp_path / "data"))
    assert result.exit_code == 4, result.output
    assert _errors(result) == [
        f"cbpt-guard: error: --data {tmp_path / 'data'}: no class subfolders (an ImageFolder has one subfolder "
        "per class, named after it; found 0 loose image(s))"]


def test_class_folders_that_differ_from_the_manifest_are_named_before_detection(monkeypatch, tmp_path):
    manifest = json.loads((CLEAN_EXAMPLE / "cbpt_manifest.json").read_text())["classes"]
    names = [name for name in manifest if name != "square"] + ["sqaure"]
    result = _check_example(monkeypatch, "--data", str(_image_folder(tmp_path / "data", names, per_class=1)))
    assert result.exit_code == 4, result.output
    [line] = _errors(result)
    assert "subfolder(s) ['sqaure'] name no class of the model" in line
    assert "class(es) ['square'] of the model have no subfolder" in line


def test_a_class_folder_with_no_readable_image_is_named(monkeypatch, tmp_path):
    manifest = json.loads((CLEAN_EXAMPLE / "cbpt_manifest.json").read_text())["classes"]
    data = _image_folder(tmp_path / "data", [name for name in manifest if name != "ring"], per_class=1)
    (data / "ring").mkdir()
    (data / "ring" / "broken.png").write_bytes(b"not a png")
    result = _check_example(monkeypatch, "--data", str(data))
    assert result.exit_code == 4, result.output
    assert "no readable image for class(es) ['ring']" in result.stderr


def test_a_probe_folder_without_images_is_a_usage_error_before_detection(monkeypatch, tmp_path):
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "notes.txt").write_text("no images here")
    result = _check_example(monkeypatch, "--probes", str(tmp_path / "probes"))
    assert result.exit_code == 4, result.output
    [line] = _errors(result)
    assert line.startswith(f"cbpt-guard: error: --probes {tmp_path / 'probes'}: no readable images")
