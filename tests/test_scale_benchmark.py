"""benchmarks/scale.py's bounded child runs and its bars: a child past a bound is stopped and says why."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("scale", Path(__file__).parents[1] / "benchmarks" / "scale.py")
scale = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(scale)


def test_a_child_past_its_time_cap_is_stopped_and_says_so(tmp_path):
    outcome = scale.run_bounded([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1, cap_gb=16,
                                reserve_gb=0, env={}, log=tmp_path / "log")

    assert outcome["stopped"].startswith("stopped after the 1 s time cap")
    assert outcome["exit_code"] != 0 and outcome["seconds"] < 10


def test_a_child_over_its_memory_cap_is_stopped_and_says_so(tmp_path):
    grow = "import time; block = bytearray(400 * 1024 * 1024); time.sleep(30)"

    outcome = scale.run_bounded([sys.executable, "-c", grow], timeout=60, cap_gb=0.2, reserve_gb=0, env={},
                                log=tmp_path / "log")

    assert outcome["stopped"].endswith("GB resident, over the 0.2 GB cap")
    assert outcome["peak_rss_gb"] >= 0.2


def test_a_child_that_ends_reports_its_exit_code_and_peak(tmp_path):
    outcome = scale.run_bounded([sys.executable, "-c", "import sys; print('done'); sys.exit(3)"], timeout=60,
                                cap_gb=16, reserve_gb=0, env={}, log=tmp_path / "log")

    assert (outcome["exit_code"], outcome["stopped"]) == (3, "")
    assert "done" in outcome["log_tail"] and outcome["peak_rss_gb"] > 0


@pytest.mark.parametrize(("at_100", "at_1000", "within"), [(10.0, 29.0, True), (10.0, 31.0, False)])
def test_anomaly_bar_is_the_ratio_of_1000_to_100_classes(at_100, at_1000, within):
    stages = [{"arch": "ViT-B-32", "classes": count, "stage": "per-class anomaly search", "status": "ok",
               "seconds": seconds} for count, seconds in ((100, at_100), (1000, at_1000))]

    bar = scale.summary(stages)["anomaly_1000_vs_100_ViT-B-32"]

    assert bar["within_3x"] is within and bar["ratio"] == round(at_1000 / at_100, 2)


def test_an_anomaly_search_that_did_not_finish_at_1000_classes_fails_the_bar():
    stages = [{"arch": "RN50", "classes": 100, "stage": "per-class anomaly search", "status": "ok", "seconds": 5.0},
              {"arch": "RN50", "classes": 1000, "stage": "(worker)", "status": "stopped", "error": "cap"}]

    bar = scale.summary(stages)["anomaly_1000_vs_100_RN50"]

    assert bar["within_3x"] is False and bar["ratio"] is None


def test_a_stage_line_gets_the_default_budget_extrapolated_from_its_per_step_cost(tmp_path):
    log = scale.StageLog(tmp_path / "stages.jsonl", "ViT-B-32", 10)

    scale._extrapolate(log, log.measure("inversion: patch", lambda: {"_record": {"per_step_s": 2.5}}), 300)
    scale._extrapolate(log, log.measure("broken", lambda: 1 / 0), 300)

    first, failed = (json.loads(line) for line in log.path.read_text().splitlines())
    assert (first["status"], first["default_budget_s"]) == ("ok", 750.0)
    assert failed["status"] == "failed" and "ZeroDivisionError" in failed["error"] and "default_budget_s" not in failed
