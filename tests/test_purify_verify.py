"""Verification after purification, table-style: which dummy is evidence, the bar each is held to and why,
and whether each met it (cbpt_guard.purify.verify filling cbpt_guard.verification's records)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cbpt_guard.policy.schema import DummyScope
from cbpt_guard.purify.verify import ClassifierMetrics, dummy_bars, dummy_evidence, verify
from cbpt_guard.verification import RISE_TOLERANCE, BarBasis, DummyCheck, Verification

CLASSES = ("circle", "square", "cross")
TARGETS = {"patch": "cross", "warp": "square"}
E, N, A = BarBasis.EVIDENCE, BarBasis.NOT_EVIDENCE, BarBasis.ALL_HELD


def _detection(suspected: str | None = "cross", warp_z: float | None = -2.75, threshold: float = 0.99865):
    return SimpleNamespace(suspected_target=suspected, threshold=threshold,
                           families=[SimpleNamespace(family="patch", z=4.7), SimpleNamespace(family="warp", z=warp_z)])


@pytest.mark.parametrize(("detection", "expected"), [
    (_detection(), {"patch": True, "warp": False}),  # toward the suspected class / an attractor, weak z
    (_detection(warp_z=3.5), {"patch": True, "warp": True}),  # its own z clears the threshold: a second backdoor
    (_detection(warp_z=None), {"patch": True, "warp": True}),  # no z to judge it by: evidence
    (_detection(suspected="square"), {"patch": True, "warp": True}),  # patch by z, warp by its target
    (_detection(suspected=None, warp_z=-2.75), {"patch": True, "warp": False}),  # no suspect: z alone
    (None, {"patch": True, "warp": True}),  # no detection at all: every dummy is evidence
])
def test_a_dummy_is_evidence_when_it_draws_to_the_suspect_or_its_own_z_clears_the_threshold(detection, expected):
    assert dummy_evidence(TARGETS, ["patch", "warp"], detection) == expected


@pytest.mark.parametrize(("scope", "is_evidence", "expected"), [
    ("all", {"patch": True, "warp": False}, {"patch": (0.05, A), "warp": (0.05, A)}),
    ("evidence", {"patch": True, "warp": False}, {"patch": (0.05, E), "warp": (0.064 + RISE_TOLERANCE, N)}),
    ("evidence", {"patch": True, "additive": False}, {"patch": (0.05, E), "additive": (0.05, N)}),  # 3% + 1 < 5
    ("evidence", {"patch": False, "warp": False}, {"patch": (0.05, A), "warp": (0.05, A)}),  # fail closed
    ("evidence", {"patch": True, "sig": False}, {"patch": (0.05, E), "sig": (0.05, N)}),  # no rate before
])
def test_dummy_bars_hold_no_evidence_dummies_to_their_own_rate_under_scope_evidence(scope, is_evidence, expected):
    before = {"patch": 0.49, "warp": 0.064, "additive": 0.03}
    assert dummy_bars(0.05, DummyScope(scope), is_evidence, before) == expected


def _verify(warp_after: float, *, scope: str = "evidence", warp_z: float | None = -2.75, patch_after: float = 0.018,
            detection=..., ca_drop: float = 0.0, residual: bool = False, labels: bool = False) -> Verification:
    dummies = [SimpleNamespace(family="patch", target_index=2), SimpleNamespace(family="warp", target_index=1)]
    accuracy = 0.9 if labels else None
    before = ClassifierMetrics(clean_accuracy=accuracy, agreement=1.0, dummy_asr={"patch": 0.49, "warp": 0.064})
    after = ClassifierMetrics(clean_accuracy=accuracy, agreement=1.0,
                              dummy_asr={"patch": patch_after, "warp": warp_after})
    bars = SimpleNamespace(max_asr=0.05, dummies=DummyScope(scope))
    return verify(dummies, before, after, ca_drop, residual, CLASSES,
                  _detection(warp_z=warp_z) if detection is ... else detection, bars)


# case: (verification, family, basis, evidence, bar, met)
CASES = {
    "evidence dummy under the bar -> met": (_verify(0.0), "patch", E, True, 0.05, True),
    "evidence dummy over the bar -> missed": (_verify(0.0, patch_after=0.06), "patch", E, True, 0.05, False),
    "non-evidence dummy below its rate before -> met": (_verify(0.062), "warp", N, False, 0.074, True),
    "non-evidence dummy rising by less than RISE_TOLERANCE -> met": (_verify(0.072), "warp", N, False, 0.074, True),
    "non-evidence dummy rising past RISE_TOLERANCE -> missed": (_verify(0.080), "warp", N, False, 0.074, False),
    "scope all holds the non-evidence dummy to max_asr -> missed": (_verify(0.062, scope="all"), "warp", A, False,
                                                                     0.05, False),
    "a second backdoor (own z clears) is held to max_asr": (_verify(0.062, warp_z=3.5), "warp", E, True, 0.05,
                                                             False),
    "no detection: every dummy held, none scoped": (_verify(0.04, detection=None), "warp", E, True, 0.05, True),
}


@pytest.mark.parametrize("case", CASES)
def test_each_dummy_is_recorded_with_its_bar_why_and_whether_it_met_it(case):
    verification, family, basis, evidence, bar, met = CASES[case]
    dummy = {d.family: d for d in verification.dummies}[family]
    assert (dummy.basis, dummy.evidence, dummy.met) == (basis, evidence, met)
    assert dummy.bar == pytest.approx(bar)
    assert dummy.target == TARGETS[family]
    assert dummy.before == {"patch": 0.49, "warp": 0.064}[family]


def test_the_verified_asr_counts_only_held_dummies_and_risen_ones_are_listed_apart():
    risen = _verify(0.080)
    assert (risen.asr, risen.scoped, [d.family for d in risen.risen]) == (0.018, True, ["warp"])
    assert risen.worst.family == "patch" and risen.suspected == "cross"
    everything = _verify(0.080, scope="all")
    assert (everything.asr, everything.scoped, everything.risen) == (0.080, False, ())
    assert everything.worst.family == "warp"
    tie = _verify(0.02, scope="all", patch_after=0.02)
    assert tie.worst.family == "patch"  # first by family on a tie


def test_verification_keeps_the_measured_order_and_clamps_the_accuracy_cost():
    verification = _verify(0.0, ca_drop=1.7, residual=True, labels=True)
    assert [d.family for d in verification.dummies] == ["patch", "warp"]
    assert (verification.ca_drop, verification.residual_evidence, verification.labelled) == (1.0, True, True)
    assert not _verify(0.0).labelled
    assert _verify(0.0, ca_drop=-3.0).ca_drop == -1.0


def test_no_dummies_verify_to_no_asr_and_no_worst():
    empty = Verification(dummies=(), ca_drop=0.0)
    assert (empty.asr, empty.scoped, empty.risen, empty.worst) == (0.0, False, (), None)


@pytest.mark.parametrize("field", ["before", "after"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_a_dummy_record_refuses_impossible_rates(field, value):
    rates = {"before": 0.1, "after": 0.1, field: value}
    with pytest.raises(ValueError):
        DummyCheck(family="patch", target="cross", bar=0.05, basis=E, evidence=True, **rates)


def test_a_bar_may_pass_one_when_the_rate_before_was_total():
    dummy = DummyCheck(family="warp", target="square", before=1.0, after=1.0, bar=1.0 + RISE_TOLERANCE, basis=N,
                       evidence=False)
    assert dummy.met
