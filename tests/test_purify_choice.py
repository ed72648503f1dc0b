"""The dummy-trigger choice: every family strongest first, or with the evidence rule those at the bar."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from cbpt_guard.purify.triggers_choice import EVIDENCE_Z, select_dummy_triggers
from cbpt_guard.triggers import make_trigger


def _evidence(*families: str) -> SimpleNamespace:
    """Detection-shaped evidence: one dict per family with its inverted trigger (as ``Evidence.families``)."""
    return SimpleNamespace(families=[{"family": name, "trigger": make_trigger(name, 8, seed), "target": "cat"}
                                     for seed, name in enumerate(families)])


def _families(triggers) -> list[str]:
    return [trigger.family for trigger in triggers]


def test_by_default_keeps_every_family_strongest_first():
    evidence = _evidence("patch", "additive", "warp")
    chosen = select_dummy_triggers(evidence, {"patch": 2.5, "additive": 6.0, "warp": -0.6, "anomaly": 9.0})
    assert _families(chosen) == ["additive", "patch", "warp"]
    assert chosen[0] is evidence.families[1]["trigger"]  # the inverted modules themselves, not copies


def test_the_rule_keeps_every_family_at_or_above_the_bar_strongest_first():
    evidence = _evidence("patch", "additive", "warp")
    chosen = select_dummy_triggers(evidence, {"patch": 2.5, "additive": 6.0, "warp": -0.6, "anomaly": 9.0},
                                   min_z=EVIDENCE_Z)
    assert _families(chosen) == ["additive", "patch"]
    assert chosen[0] is evidence.families[1]["trigger"]  # the inverted modules themselves, not copies


def test_the_bar_is_inclusive_and_can_be_moved():
    evidence = _evidence("patch", "additive", "warp")
    zs = {"patch": EVIDENCE_Z, "additive": 1.5, "warp": 0.2}
    assert _families(select_dummy_triggers(evidence, zs, min_z=EVIDENCE_Z)) == ["patch"]
    assert _families(select_dummy_triggers(evidence, zs, min_z=1.0)) == ["patch", "additive"]
    assert _families(select_dummy_triggers(evidence, zs, min_z=-math.inf)) == ["patch", "additive", "warp"]


def test_without_evidence_falls_back_to_the_most_anomalous_family():
    evidence = _evidence("patch", "additive", "warp")
    zs = {"patch": -0.2, "additive": 1.1, "warp": -0.4}
    assert _families(select_dummy_triggers(evidence, zs, min_z=EVIDENCE_Z)) == ["additive"]


def test_missing_or_nan_z_counts_as_no_evidence():
    evidence = _evidence("patch", "additive", "warp")
    chosen = select_dummy_triggers(evidence, {"patch": float("nan"), "warp": 0.5}, min_z=EVIDENCE_Z)
    assert _families(chosen) == ["warp"]
    assert _families(select_dummy_triggers(evidence, {"patch": float("nan"), "warp": 0.5})) == ["warp", "patch",
                                                                                              "additive"]
    assert _families(select_dummy_triggers(evidence, {}, min_z=EVIDENCE_Z)) == ["patch"]  # nothing scored: the first


def test_families_without_a_trigger_are_skipped_and_nothing_inverted_gives_nothing():
    evidence = _evidence("patch", "additive")
    evidence.families[1]["trigger"] = None
    assert _families(select_dummy_triggers(evidence, {"patch": -1.0, "additive": 8.0})) == ["patch"]
    assert select_dummy_triggers(SimpleNamespace(families=[]), {"patch": 5.0}) == []


def test_chosen_triggers_stamp_images_as_detection_left_them():
    evidence = _evidence("patch", "additive", "warp")
    (chosen,) = select_dummy_triggers(evidence, {"patch": 0.0, "additive": 3.0, "warp": 0.0}, min_z=EVIDENCE_Z)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = evidence.families[1]["trigger"](images)
    torch.testing.assert_close(chosen(images), expected)
    assert not torch.equal(chosen(images), images)
