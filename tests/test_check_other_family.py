"""A model of another family meets the shipped calibration: it is told so, and strict does not pretend.

The checked model is a tiny open_clip ViT (tests/tiny_models.py: embedding
width 32, image width 64, two layers) with a class list of its own; the
shipped calibration was fitted on the zoo's family (width 128, four layers,
embedding 64, 22 classes). Its calibrated score is another family's
statistics, so the run must say "uncalibrated for this model family", name
the command that fixes it, and (strict) exit 3 unless the reference-free
evidence is itself conclusive.

The fast test runs strict's rules on the shipped calibration's statistics
and family at a cheap budget (a calibration only holds at its own budget, so
the file is the shipped one with only its budget replaced); the slow one runs
the real `check --policy strict` at the shipped budget.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.budget import scoring_settings
from cbpt_guard.detect.domain import UNCALIBRATED
from cbpt_guard.errors import ExitCode
from cbpt_guard.pipeline import detect_budget
from cbpt_guard.policy import load_policy

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TODAY = dt.date(2026, 1, 15)
CLASSES = ["apple", "bicycle", "cloud", "dolphin", "envelope", "fern", "guitar", "hammer"]
STEPS, BATCH = 20, 16


@pytest.fixture(scope="module")
def other_family(tmp_path_factory):
    """A tiny ViT of another width, saved as an open_clip folder with its own class list."""
    model, config = build_tiny("vit", seed=11)
    return save_open_clip_dir(model, config, tmp_path_factory.mktemp("other-family"), "safetensors", classes=CLASSES)


def _cheap_strict(folder: Path) -> Path:
    """policies/strict.yaml at a cheap budget, with the shipped calibration's statistics and family at it."""
    text = (REPO / "policies" / "strict.yaml").read_text()
    text = text.replace("calibration: builtin", "calibration: shipped-at-budget.json")
    text = text.replace("steps: 300", f"steps: {STEPS}").replace("batch_size: 32", f"batch_size: {BATCH}")
    assert "shipped-at-budget.json" in text and f"steps: {STEPS}" in text
    policy = folder / "strict-cheap.yaml"
    policy.write_text(text)
    shipped = calib.builtin_calibration()
    assert shipped.domain is not None
    budget = scoring_settings(detect_budget(load_policy(policy)))
    (folder / "shipped-at-budget.json").write_text(dataclasses.replace(shipped, budget=budget).to_json())
    return policy


def _assert_uncalibrated(verdict: dict, exit_code: int) -> None:
    detection = verdict["detection"]
    assert detection["uncalibrated"].startswith(UNCALIBRATED)
    assert "embedding width 32 (fitted on 64)" in detection["uncalibrated"]
    assert "cbpt-guard calibrate CLEAN_MODEL" in detection["uncalibrated"]
    assert any(r.startswith(UNCALIBRATED) for r in verdict["decision"]["reasons"])
    free = detection["reference_free"]
    assert free is not None
    if free["found"]:  # conclusive reference-free evidence is a finding: strict acts on it
        assert exit_code == ExitCode.BLOCKED and detection["outcome"] == "backdoor evidence found"
    else:  # otherwise never a finding built on another family's statistics, and never a pass
        assert exit_code == ExitCode.INCONCLUSIVE and detection["outcome"] == "inconclusive"
        assert verdict["decision"]["action"] == "inconclusive"


def test_model_of_another_family_is_uncalibrated_and_inconclusive_under_strict(other_family, tmp_path):
    policy = _cheap_strict(tmp_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["check", str(other_family), "--policy", str(policy), "--out", str(out)])
    verdict = json.loads((out / "verdict.json").read_text())
    # this random model has no backdoor, and its reference-free score does not claim one: exit 3
    assert verdict["detection"]["reference_free"]["found"] is False, verdict["detection"]["reference_free"]
    assert result.exit_code == ExitCode.INCONCLUSIVE, result.output
    _assert_uncalibrated(verdict, result.exit_code)
    assert UNCALIBRATED in result.output and "cbpt-guard calibrate CLEAN_MODEL" in result.output
    for report in ("summary.md", "report.html", "results.sarif"):
        assert UNCALIBRATED in (out / report).read_text()
    assert "Reference-free score" in (out / "report.html").read_text()


@pytest.mark.slow
def test_model_of_another_family_under_the_real_strict_policy(other_family, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["check", str(other_family), "--policy", "strict", "--out", str(out)])
    verdict = json.loads((out / "verdict.json").read_text())
    _assert_uncalibrated(verdict, result.exit_code)


def test_detect_names_the_other_family_and_exits_3(other_family, tmp_path):
    from cbpt_guard.detect.budget import DetectBudget, InversionBudget

    budget = DetectBudget(inversion=InversionBudget(steps=STEPS, batch_size=BATCH))
    calibration = tmp_path / "shipped-at-budget.json"
    calibration.write_text(dataclasses.replace(calib.builtin_calibration(), budget=scoring_settings(budget)).to_json())
    result = CliRunner().invoke(cli, ["detect", str(other_family), "--calibration", str(calibration), "--json",
                                      "--steps", str(STEPS), "--batch-size", str(BATCH)])
    report = json.loads(result.stdout)
    assert report["uncalibrated"].startswith(UNCALIBRATED) and report["reference_free"]["found"] is False
    assert (report["outcome"], result.exit_code) == ("inconclusive", ExitCode.INCONCLUSIVE)
