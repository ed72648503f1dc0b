"""Detection budgets: counted in steps (never in seconds), valid only with a calibration fitted at them, and reported.

Tiny random models and small budgets keep these cheap; the examples are only
loaded (never inverted) by the tests of a mismatched calibration, which must
end before detection starts.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.api import calibrate_models
from cbpt_guard.detect.run import DetectBudget, InversionBudget, detect, gather_evidence
from cbpt_guard.intake import load_checkpoint

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CLASSES = ["circle", "square", "triangle"]
SMALL = DetectBudget(probes=16, inversion=InversionBudget(steps=20), anomaly_steps=4, targeted_classes=1)
SMALL_FLAGS = ["--steps", "20", "--n-probes", "16", "--anomaly-steps", "4", "--targeted", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random open_clip model directory with three classes."""
    model, config = build_tiny("vit", seed=3)
    return save_open_clip_dir(model, config, tmp_path_factory.mktemp("tiny"), "safetensors", classes=CLASSES)


def _slow_clock(monkeypatch, seconds_per_call: float = 5.0) -> None:
    """Make every reading of the clock look ``seconds_per_call`` later than the last: a machine under heavy load."""
    ticks = itertools.count(start=time.perf_counter(), step=seconds_per_call)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))


def _comparable(report) -> dict:
    """A detection report without its wall-clock fields."""
    data = report.model_dump(mode="json")
    data.pop("seconds")
    for family in data["families"]:
        family.pop("seconds")
    data["budget"].pop("time_limit_s", None)
    return data


# -- a calibration holds only at the budget it was fitted at ---------------------------------------------------


def test_shipped_calibration_records_the_default_budget_it_was_fitted_at():
    from cbpt_guard.detect.budget import ADDED_SETTINGS, scoring_settings

    shipped = calib.builtin_calibration()
    assert ADDED_SETTINGS | shipped.budget == scoring_settings(DetectBudget())  # read as budget_differences reads it
    assert shipped.budget["inversion"]["steps"] == 300 and shipped.budget["families"] == ["patch", "additive", "warp"]


def test_calibrate_records_its_budget_and_detect_refuses_another_before_any_work(tiny, tmp_path, monkeypatch):
    from cbpt_guard.detect.budget import scoring_settings

    runner = CliRunner()
    calibration = tmp_path / "cal.json"
    made = runner.invoke(cli, ["calibrate", str(tiny), "--out", str(calibration), *SMALL_FLAGS, "--batch-size", "8"])
    assert made.exit_code == 0, made.output
    fitted = replace(SMALL, inversion=replace(SMALL.inversion, batch_size=8))
    assert json.loads(calibration.read_text())["budget"] == scoring_settings(fitted)

    from cbpt_guard.detect import run

    monkeypatch.setattr(run, "gather_evidence", _must_not_run)
    other = [flag if flag != "20" else "40" for flag in SMALL_FLAGS]
    result = runner.invoke(cli, ["detect", str(tiny), "--calibration", str(calibration), *other])
    assert result.exit_code == 3, result.output
    assert "batch_size 32 (fitted at 8); steps 40 (fitted at 20)" in result.stderr
    assert "cbpt-guard calibrate" in result.stderr and "--steps 40 --batch-size 32" in result.stderr


def _must_not_run(*args, **kwargs):
    raise AssertionError("detection ran although its calibration was fitted at another budget")


def _fast_policy(tmp_path: Path, steps: int) -> Path:
    """The balanced policy with another number of inversion steps."""
    text = (REPO / "policies" / "balanced.yaml").read_text()
    assert "    steps: 300\n" in text
    path = tmp_path / f"balanced-{steps}-steps.yaml"
    path.write_text(text.replace("    steps: 300\n", f"    steps: {steps}\n", 1))
    return path


def test_a_faster_policy_on_the_backdoored_example_is_inconclusive_before_detection(tmp_path, monkeypatch):
    from cbpt_guard.detect import run

    monkeypatch.setattr(run, "gather_evidence", _must_not_run)
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["check", str(EXAMPLES / "backdoored"), "--policy",
                                      str(_fast_policy(tmp_path, 20)), "--json"])
    seconds = time.perf_counter() - started
    assert result.exit_code == 3, result.output
    verdict = json.loads(result.stdout)
    assert verdict["decision"]["action"] == "inconclusive" and verdict["detection"] is None
    reason = next(step["reason"] for step in verdict["steps"] if step["name"] == "detection")
    assert reason.startswith("uncalibrated:") and "steps 20 (fitted at 300)" in reason
    assert "cbpt-guard calibrate" in reason and "--steps 20" in reason
    assert seconds < 60  # intake only: a full detection of the example takes minutes here


def test_policy_validate_refuses_a_budget_its_calibration_was_not_fitted_at(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["policy", "validate", str(_fast_policy(tmp_path, 20))])
    assert result.exit_code == 4
    assert "uncalibrated" in result.stderr and "--steps 20" in result.stderr
    assert runner.invoke(cli, ["policy", "validate", str(_fast_policy(tmp_path, 300))]).exit_code == 0


# -- budgets in steps: the clock never changes a result --------------------------------------------------------


def test_detection_under_heavy_load_gives_the_same_verdict(tiny, monkeypatch):
    loaded = load_checkpoint(tiny)
    args = (loaded.model, loaded.report.classes, loaded.report.templates)
    calibration = calibrate_models([tiny], budget=SMALL, seed=2)
    calm = detect(*args, calibration=calibration, budget=SMALL, seed=2)
    _slow_clock(monkeypatch)  # each step now looks 5 s or more long: far past the old 60 s per family
    loaded_machine = detect(*args, calibration=calibration, budget=SMALL, seed=2)
    assert all(f.steps_run == SMALL.inversion.steps for f in loaded_machine.families if f.family != "targeted")
    assert _comparable(loaded_machine) == _comparable(calm)


def test_a_run_past_its_time_limit_is_inconclusive_with_the_reason_never_a_crash(tiny, tmp_path, monkeypatch):
    runner = CliRunner()
    calibration = tmp_path / "cal.json"
    assert runner.invoke(cli, ["calibrate", str(tiny), "--out", str(calibration), *SMALL_FLAGS]).exit_code == 0
    _slow_clock(monkeypatch)
    result = runner.invoke(cli, ["detect", str(tiny), "--calibration", str(calibration), "--time-limit", "1",
                                 *SMALL_FLAGS])
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cbpt-guard: error: detection ran past its time limit of 1 s during detection: patch "
                           "inversion (step 1 of 20)")


# -- progress: step counts and an ETA on every long stage ------------------------------------------------------


def test_detection_progress_names_every_stage_with_step_counts_and_an_eta(tiny):
    loaded = load_checkpoint(tiny)
    reported = []
    gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=SMALL, seed=0,
                    progress=reported.append)
    events = [e for e in reported if hasattr(e, "step")]  # the rest are plain lines between stages
    finished = {e.stage: e for e in events if e.step == e.total}
    stages = sorted(finished)
    assert [s for s in stages if "inversion" in s and "targeted" not in s] == [
        "detection: additive inversion", "detection: patch inversion", "detection: warp inversion"]
    assert any(s.startswith("detection: per-class anomaly search") for s in stages)
    assert any(s.startswith("detection: targeted patch inversion toward") for s in stages)
    assert finished["detection: patch inversion"].total == 20
    middle = [e for e in events if 0 < e.step < e.total]
    assert middle and all(e.eta_s is not None for e in middle)
    assert "step 10/20 (50%)" in str(next(e for e in middle if e.stage == "detection: patch inversion"
                                          and e.step == 10))
    assert "ETA" in str(middle[0])


def test_cli_progress_is_plain_lines_with_step_counts_and_eta_in_a_log(tiny, tmp_path):
    runner = CliRunner()
    calibration = tmp_path / "cal.json"
    assert runner.invoke(cli, ["calibrate", str(tiny), "--out", str(calibration), *SMALL_FLAGS]).exit_code == 0
    result = runner.invoke(cli, ["detect", str(tiny), "--calibration", str(calibration), *SMALL_FLAGS])
    assert result.exit_code in (0, 1, 3), result.output
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert any("detection: warp inversion: step 10/20 (50%)" in line and "ETA" in line for line in lines)
    assert any("detection: per-class anomaly search" in line and "step 4/4" in line for line in lines)
    assert len(lines) < 80  # about ten lines per stage, whatever the machine's speed


def test_on_a_terminal_a_stage_rewrites_one_line_and_ends_it():
    from cbpt_guard.cli.progress import ProgressPrinter
    from cbpt_guard.progress import ProgressEvent

    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer(ProgressEvent("detection: patch inversion", 10, 20, 4.0))
    printer(ProgressEvent("detection: patch inversion", 20, 20, 8.0))
    printer("next stage")
    text = out.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 2
    assert "step 10/20 (50%), 4 s elapsed, ETA 4 s" in text and text.endswith("next stage\n")


def test_prompt_tuning_reports_its_steps_with_an_eta(tiny):
    from cbpt_guard.purify.trainer import tune_prompts
    from cbpt_guard.triggers import make_trigger

    loaded = load_checkpoint(tiny)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reported = []
    tune_prompts(loaded.model, CLASSES, loaded.report.templates, images, torch.tensor([0, 1, 2, 0, 1, 2]),
                 [make_trigger("patch", 32, 0)], steps=4, progress=reported.append)
    lines = [str(e) for e in reported]
    assert lines[0] == "purification: prompt tuning: step 0/4 (0%), 0 s elapsed, ETA --"
    assert lines[-1].startswith("purification: prompt tuning: step 4/4 (100%)")
    assert all("ETA" in line for line in lines)
