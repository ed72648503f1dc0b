"""Budgets degrade, never crash: out of time, or a model too large for its budget, is inconclusive with the reason.

The clock is faked (every reading a few seconds after the last: a machine
under heavy load, or a model whose every step is slow), so these run in seconds.
"""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.detect.run import DetectBudget, InversionBudget, gather_evidence
from cbpt_guard.errors import ExitCode, TimeLimitExceeded

torch.set_num_threads(1)
CLASSES = ["circle", "square", "triangle"]
SMALL = DetectBudget(probes=16, inversion=InversionBudget(steps=20), anomaly_steps=4, targeted_classes=1)
SMALL_FLAGS = ["--steps", "20", "--n-probes", "16", "--anomaly-steps", "4", "--targeted", "1"]
POLICY = """\
version: 1
mode: enforce
detection:
  budget: {{steps: 20, time_limit_s: {limit}, targeted_classes: 1}}
  calibration: cal.json
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model folder and a calibration fitted on it at the small budget (and the policy's)."""
    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.pipeline import detect_budget
    from cbpt_guard.policy import load_policy

    model, config = build_tiny("vit", seed=3)
    directory = save_open_clip_dir(model, config, tmp_path_factory.mktemp("tiny"), "safetensors", classes=CLASSES)
    folder = tmp_path_factory.mktemp("cal")
    (folder / "small.json").write_text(calibrate_models([directory], budget=SMALL).to_json())
    (folder / "policy.yaml").write_text(POLICY.format(limit=600))
    policy_budget = detect_budget(load_policy(folder / "policy.yaml"))
    (folder / "cal.json").write_text(calibrate_models([directory], budget=policy_budget).to_json())
    return directory, folder


def _slow_clock(monkeypatch, seconds_per_call: float) -> None:
    """Every reading of the clock ``seconds_per_call`` later than the last."""
    ticks = itertools.count(start=time.perf_counter(), step=seconds_per_call)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))


def test_detect_past_its_time_limit_exits_3_with_the_reason(tiny, monkeypatch):
    directory, folder = tiny
    _slow_clock(monkeypatch, 5.0)
    result = CliRunner().invoke(cli, ["detect", str(directory), "--calibration", str(folder / "small.json"),
                                      "--time-limit", "1", *SMALL_FLAGS])
    assert result.exit_code == ExitCode.INCONCLUSIVE, result.output
    assert "ran past its time limit of 1 s during detection: patch inversion (step 1 of 20)" in result.stderr
    assert "internal error" not in result.output


def test_a_model_too_large_for_its_budget_stops_after_its_first_step_with_the_estimate(tiny, monkeypatch):
    directory, folder = tiny
    _slow_clock(monkeypatch, 5.0)  # each step looks seconds long: the whole run would be far past 2 x 120 s
    result = CliRunner().invoke(cli, ["detect", str(directory), "--calibration", str(folder / "small.json"),
                                      "--time-limit", "120", *SMALL_FLAGS])
    assert result.exit_code == ExitCode.INCONCLUSIVE, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert re.match(r"cbpt-guard: error: detection would take at least about (\d+ s|\S+) \(from the first 1 step of "
                    r"detection: patch inversion\), more than 2 times its time limit of 2m00s: the model is too "
                    r"large for this budget on this machine", line), line


def test_check_of_a_model_too_large_for_its_budget_is_inconclusive_with_the_reason(tiny, monkeypatch, tmp_path):
    directory, folder = tiny
    policy = folder / "slow.yaml"
    policy.write_text(POLICY.format(limit=120))
    _slow_clock(monkeypatch, 5.0)
    result = CliRunner().invoke(cli, ["check", str(directory), "--policy", str(policy), "--json"])
    assert result.exit_code == ExitCode.INCONCLUSIVE, result.output
    verdict = json.loads(result.stdout)
    detection = next(step for step in verdict["steps"] if step["name"] == "detection")
    assert detection["state"] == "skipped" and "the model is too large for this budget" in detection["reason"]
    assert verdict["decision"]["action"] == "inconclusive"


def test_the_run_says_its_estimated_time_once_after_its_first_steps(tiny):
    from cbpt_guard.intake import load_checkpoint
    from cbpt_guard.progress import ESTIMATE_AFTER_STEPS

    directory, _ = tiny
    loaded = load_checkpoint(directory)
    heard = []
    gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=SMALL, progress=heard.append)
    said = [line for line in heard if isinstance(line, str) and "estimated" in line]
    assert len(said) == 1
    assert re.fullmatch(rf"detection: estimated (\d+ s|\S+) in all \(from the first {ESTIMATE_AFTER_STEPS} steps of "
                        r"detection: patch inversion; time limit 1h00m\)", said[0]), said


def test_the_estimate_never_stops_a_run_that_fits(tiny, monkeypatch):
    """A clock at most half as fast as the limit allows lets the run finish: the estimate stops only hopeless runs."""
    from cbpt_guard.intake import load_checkpoint

    directory, _ = tiny
    loaded = load_checkpoint(directory)
    _slow_clock(monkeypatch, 1.0)
    calls_per_step = 4  # generously: the meter's readings and the inversions' own
    steps = 3 * 20 + 4 + 10
    roomy = DetectBudget(**{**SMALL.__dict__, "time_limit_s": calls_per_step * steps * 2.0})
    gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=roomy)  # no raise


def test_planned_work_counts_every_stage_of_the_budget():
    from cbpt_guard.detect.run import planned_work
    from cbpt_guard.progress import TOO_LARGE_FACTOR

    base = planned_work(SMALL, classes=3)
    assert planned_work(DetectBudget(**{**SMALL.__dict__, "anomaly_steps": 0}), classes=3) < base
    assert planned_work(SMALL, classes=300) > base  # the anomaly search grows with the classes
    assert TOO_LARGE_FACTOR >= 2  # the margin that keeps a noisy first step from stopping a run that fits
    from cbpt_guard.progress import Deadline

    with pytest.raises(TimeLimitExceeded):
        Deadline(1.0, planned=1000.0, started=time.perf_counter() - 0.5).spend(
            1.0, 1.0, 0.5, ("stage", 1, 10), lambda line: None)
    # a loosely modelled stage (the per-class search) never stops a run whose sure part fits
    Deadline(1.0, planned=1000.0, sure=2.0, started=time.perf_counter() - 0.5).spend(
        1.0, 1.0, 0.5, ("stage", 1, 10), lambda line: None)
