"""The bundled example checkpoints, through the shipped calibration: what `make demo` shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cbpt_guard.detect.api import default_calibration, detect_checkpoint
from cbpt_guard.intake import inspect_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_shipped_calibration_loads_and_names_its_clean_references():
    calibration = default_calibration()
    assert 0.99 < calibration.threshold < 1.0
    assert len(calibration.references) >= 6
    assert all("clean-s" in reference for reference in calibration.references)


@pytest.mark.parametrize("name", ["clean", "backdoored"])
def test_examples_are_small_fp16_open_clip_directories(name):
    report = inspect_checkpoint(EXAMPLES / name)
    assert report.layout == "open_clip-dir" and report.class_count == 22
    assert set(report.dtypes) == {"F16"}
    assert (EXAMPLES / name / "open_clip_model.safetensors").stat().st_size < 8 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.usefixtures("shared_detection")
@pytest.mark.parametrize("name", ["clean", "backdoored"])
def test_detection_on_the_examples_matches_their_ground_truth(name):
    torch.set_num_threads(1)
    truth = json.loads((EXAMPLES / name / "zoo_truth.json").read_text())
    report = detect_checkpoint(EXAMPLES / name)
    if truth["kind"] == "backdoored":
        assert report.outcome == "backdoor evidence found"
        assert report.suspected_target == truth["target"]
    else:
        assert report.outcome == "no evidence of a backdoor found"
        assert report.score < report.threshold
