"""The dummy-trigger choice: every family strongest first, or with the evidence rule those at the bar."""

from __future__ import annotations

import math

import torch

from cbpt_guard.detect.calibration import builtin_calibration, features_of
from cbpt_guard.detect.findings import FamilyFinding
from cbpt_guard.detect.run import Evidence
from cbpt_guard.probes import ProbeSet
from cbpt_guard.purify.api import dummy_triggers
from cbpt_guard.purify.triggers_choice import EVIDENCE_Z, select_dummy_triggers
from cbpt_guard.triggers import make_trigger


def _evidence(*families: str) -> dict:
    """Detection-shaped triggers: per family its inverted trigger, in detection's order (as ``Evidence.triggers``)."""
    return {name: make_trigger(name, 8, seed) for seed, name in enumerate(families)}


def _families(chosen) -> list[str]:
    return list(chosen)


def test_by_default_keeps_every_family_strongest_first():
    evidence = _evidence("patch", "additive", "warp")
    chosen = select_dummy_triggers(evidence, {"patch": 2.5, "additive": 6.0, "warp": -0.6, "anomaly": 9.0})
    assert _families(chosen) == ["additive", "patch", "warp"]


def test_the_rule_keeps_every_family_at_or_above_the_bar_strongest_first():
    evidence = _evidence("patch", "additive", "warp")
    chosen = select_dummy_triggers(evidence, {"patch": 2.5, "additive": 6.0, "warp": -0.6, "anomaly": 9.0},
                                   min_z=EVIDENCE_Z)
    assert _families(chosen) == ["additive", "patch"]


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
    evidence["additive"] = None
    assert _families(select_dummy_triggers(evidence, {"patch": -1.0, "additive": 8.0})) == ["patch"]
    assert select_dummy_triggers({}, {"patch": 5.0}) == []


def _finding(family: str, target: str, log_size: float) -> FamilyFinding:
    return FamilyFinding(family=family, collapsed=True, size=0.01, log_size=log_size, collapse_cos=0.9, target=target,
                         concentration=0.9, entropy=0.1, inverted_asr=0.9, histogram=(1, 9), steps_run=10,
                         seconds=0.0, images={})


def test_each_dummy_is_its_familys_own_trigger_aimed_at_its_familys_target():
    """The targeted patch and the patch family are both patch triggers: each dummy keeps its own module and class."""
    triggers = {"patch": make_trigger("patch", 8, 0), "targeted": make_trigger("patch", 8, 1)}
    families = (_finding("patch", "cat", -1.0), _finding("targeted", "dog", -6.0))
    probes = ProbeSet(images=torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), labels=None,
                      tier="zero-data", source="procedural")
    evidence = Evidence(classes=("cat", "dog"), probes=probes, probe_count=2, families=families, anomaly=None,
                        features=features_of(families, None), skipped=(), seconds=0.0, triggers=triggers)
    dummies = dummy_triggers(evidence, builtin_calibration())
    assert [(d.family, d.target_index) for d in dummies] == [("targeted", 1), ("patch", 0)]  # smaller: stronger
    assert all(d.trigger is triggers[d.family] for d in dummies)
