"""The calibrated score: standardisation against clean references, the file format, and its errors."""

from __future__ import annotations

import json

import pytest

from cbpt_guard.detect import calibration as calib
from cbpt_guard.errors import UsageError

CLEAN = {
    "a": {"patch.log_size": -3.0, "patch.concentration": 0.40, "patch.inverted_asr": 0.30, "anomaly": 1.0},
    "b": {"patch.log_size": -3.2, "patch.concentration": 0.50, "patch.inverted_asr": 0.35, "anomaly": 1.5},
    "c": {"patch.log_size": -2.8, "patch.concentration": 0.45, "patch.inverted_asr": 0.25, "anomaly": 0.5},
}


def test_clean_looking_evidence_scores_near_one_half_and_outliers_near_one():
    calibration = calib.fit(CLEAN)
    typical, _ = calib.score(CLEAN["a"], calibration)
    outlier, zs = calib.score({"patch.log_size": -4.5, "patch.concentration": 0.95, "patch.inverted_asr": 0.9,
                               "anomaly": 1.0}, calibration)
    assert 0.2 < typical < 0.8
    assert outlier > calibration.threshold > 0.99
    assert max(zs, key=zs.get) == "patch"


def test_smaller_triggers_are_more_suspicious():
    calibration = calib.fit(CLEAN)
    small, _ = calib.score({**CLEAN["a"], "patch.log_size": -4.0}, calibration)
    large, _ = calib.score({**CLEAN["a"], "patch.log_size": -2.0}, calibration)
    assert small > large


def test_calibration_round_trips_through_its_file(tmp_path):
    calibration = calib.fit(CLEAN)
    path = tmp_path / "cal.json"
    path.write_text(calibration.to_json())
    loaded = calib.load_calibration(path)
    assert {k: list(v) for k, v in loaded.stats.items()} == {k: list(v) for k, v in calibration.stats.items()}
    assert loaded.threshold == calibration.threshold and loaded.references == ("a", "b", "c")


@pytest.mark.parametrize(
    "text, message",
    [("{", "not a valid calibration"), ('{"calibration_version": 2}', "calibration_version"),
     ('{"calibration_version": 1, "threshold": 2, "stats": {}}', "threshold"),
     ('{"calibration_version": 1, "threshold": 0.9, "stats": {"x": 1}}', "not a valid calibration")],
)
def test_bad_calibration_files_are_one_line_usage_errors(tmp_path, text, message):
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        calib.load_calibration(path)


def test_missing_calibration_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="no such calibration file"):
        calib.load_calibration(tmp_path / "absent.json")


def test_calibration_sharing_no_feature_cannot_score():
    calibration = calib.fit(CLEAN)
    with pytest.raises(UsageError, match="shares no feature"):
        calib.score({"warp.log_size": 1.0}, calibration)


def test_suspected_target_skips_the_clean_typical_target():
    calibration = calib.fit(CLEAN, reference_targets={name: {"patch": "checkerboard", "anomaly": "circle"}
                                                      for name in CLEAN})
    assert calibration.typical_targets == {"anomaly": "circle", "patch": "checkerboard"}
    zs = {"patch": 5.0, "additive": 2.0, "anomaly": 0.5}
    targets = {"patch": "checkerboard", "additive": "ring", "anomaly": "circle"}
    assert calib.suspected_target(zs, targets, calibration) == "ring"
    assert calib.suspected_target(zs, {**targets, "additive": "checkerboard"}, calibration) == "checkerboard"


def test_evidence_toward_a_clean_attractor_must_clear_the_margin_again(tmp_path):
    targets = {"a": {"patch": "checkerboard", "anomaly": "circle"}, "b": {"patch": "digit four", "anomaly": "circle"},
               "c": {"patch": "checkerboard", "anomaly": "circle"}}
    calibration = calib.fit(CLEAN, reference_targets=targets)
    assert calibration.attractors == {"anomaly": ("circle",), "patch": ("checkerboard", "digit four")}
    assert calibration.attractor_margin == 3.0
    strong = {"patch.log_size": -3.6, "patch.concentration": 0.75, "patch.inverted_asr": 0.6, "anomaly": 1.0}
    toward_target, zs_target = calib.score(strong, calibration, {"patch": "ring", "anomaly": "circle"})
    toward_attractor, zs_attractor = calib.score(strong, calibration, {"patch": "digit four", "anomaly": "circle"})
    assert zs_target["patch"] - zs_attractor["patch"] == pytest.approx(3.0)
    assert toward_target > calibration.threshold > toward_attractor
    assert calib.score(strong, calibration)[0] == toward_target  # no targets given: no discount
    path = tmp_path / "calibration.json"
    path.write_text(calibration.to_json())
    loaded = calib.load_calibration(path)
    assert loaded.attractors == calibration.attractors and loaded.attractor_margin == 3.0
    assert calib.score(strong, loaded, {"patch": "digit four"})[0] == pytest.approx(toward_attractor)


def test_a_calibration_file_without_attractors_scores_without_a_discount(tmp_path):
    document = json.loads(calib.fit(CLEAN, reference_targets={n: {"patch": "ring"} for n in CLEAN}).to_json())
    del document["attractors"], document["attractor_margin"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    loaded = calib.load_calibration(path)
    assert loaded.attractors == {} and loaded.attractor_margin == 0.0
    evidence = {**CLEAN["a"], "patch.concentration": 0.9}
    assert calib.score(evidence, loaded, {"patch": "ring"}) == calib.score(evidence, loaded)
    document["attractor_margin"] = -1
    path.write_text(json.dumps(document))
    with pytest.raises(UsageError, match="attractor_margin"):
        calib.load_calibration(path)
