"""A calibration knows the model family it was fitted on, and a model of another family is told so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.domain import (
    UNCALIBRATED,
    Domain,
    classes_digest,
    domain_differences,
    domain_of,
    domain_of_loaded,
    uncalibrated_statement,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _family(**changes) -> Domain:
    base = domain_of(vision_tower="VisionTransformer",
                     model_cfg={"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 4, "width": 128,
                                                                "patch_size": 8}},
                     image_size=32, embed_dim=64, classes=("circle", "square", "digit four"))
    return dataclasses.replace(base, **changes)


def test_shipped_calibration_records_the_zoo_family_and_its_references():
    from cbpt_guard.intake import load_checkpoint

    shipped = calib.builtin_calibration()
    assert shipped.domain == domain_of_loaded(load_checkpoint(EXAMPLES / "clean"))
    assert domain_differences(shipped.domain, domain_of_loaded(load_checkpoint(EXAMPLES / "backdoored"))) == []
    assert sorted(shipped.reference_sha256) == sorted(shipped.references)
    assert all(len(digest) == 64 for digest in shipped.reference_sha256.values())


def test_tiny_model_of_another_width_is_outside_the_shipped_family():
    from tests.tiny_models import TINY_CONFIGS

    config = TINY_CONFIGS["vit"]
    tiny = domain_of(vision_tower="VisionTransformer", model_cfg=config, image_size=32,
                     embed_dim=config["embed_dim"], classes=["cat", "dog"])
    differences = domain_differences(calib.builtin_calibration().domain, tiny)
    assert "embedding width 32 (fitted on 64)" in differences
    assert any(d.startswith("architecture VisionTransformer(layers=2, width=64, patch_size=8)") for d in differences)
    assert "class list of 2 names differs from the 22 fitted on" in differences


@pytest.mark.parametrize("change, words", [
    ({"image_size": 64}, "image size 64 (fitted on 32)"),
    ({"embed_dim": 32}, "embedding width 32 (fitted on 64)"),
    ({"classes_sha256": classes_digest(["a", "b"]), "class_count": 2}, "class list of 2 names differs"),
    ({"config_sha256": "0" * 64}, "model config differs"),
])
def test_each_axis_of_the_family_counts(change, words):
    fitted = _family()
    assert domain_differences(fitted, fitted) == []
    assert any(words in d for d in domain_differences(fitted, _family(**change)))


def test_class_order_does_not_change_the_family():
    assert classes_digest(["b", "a"]) == classes_digest(["a", "b"])
    assert classes_digest(["a", "b"]) != classes_digest(["a", "b "])


def test_calibration_with_no_domain_still_loads_and_counts_as_another_family(tmp_path):
    document = json.loads(calib.builtin_calibration().to_json())
    document.pop("domain")
    document.pop("reference_sha256")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(document))
    loaded = calib.load_calibration(old)
    assert loaded.domain is None and loaded.stats == calib.builtin_calibration().stats
    assert domain_differences(loaded.domain, _family()) == ["the calibration records no model family"]


def test_domain_survives_the_calibration_file(tmp_path):
    fitted = calib.fit({"a": {"patch.log_size": -3.0}, "b": {"patch.log_size": -3.2}}, domain=_family(),
                       reference_sha256={"a": "1" * 64, "b": "2" * 64})
    path = tmp_path / "cal.json"
    path.write_text(fitted.to_json())
    loaded = calib.load_calibration(path)
    assert loaded.domain == _family() and loaded.reference_sha256 == {"a": "1" * 64, "b": "2" * 64}


def test_malformed_domain_is_a_usage_error(tmp_path):
    document = json.loads(calib.builtin_calibration().to_json())
    document["domain"] = {"image_size": 32}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    from cbpt_guard.errors import UsageError

    with pytest.raises(UsageError, match="not a valid calibration file"):
        calib.load_calibration(path)


def test_uncalibrated_statement_names_the_difference_and_the_fix():
    text = uncalibrated_statement("built-in default.json", ["image size 64 (fitted on 32)"],
                                  "cbpt-guard calibrate CLEAN_MODEL [CLEAN_MODEL ...] --out calibration.json")
    assert text.startswith(UNCALIBRATED) and "image size 64 (fitted on 32)" in text
    assert "cbpt-guard calibrate CLEAN_MODEL" in text
