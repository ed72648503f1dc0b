"""The decision function, table-style: every branch, every mode, and the fail-closed invariants
checked over the whole cross product of modes, detection outcomes, waivers, purification and
incomplete runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from cbpt_guard.decide import (
    EXIT_CODES,
    Action,
    DecisionInput,
    DetectionOutcome,
    SkippedStep,
    StageFailure,
    decide,
)
from cbpt_guard.detect.outcome import Outcome
from cbpt_guard.errors import ExitCode
from cbpt_guard.policy import DataTier, DummyScope, Mode, Policy, resolve_policy
from cbpt_guard.verification import BarBasis, DummyCheck, Verification

TODAY = dt.date(2026, 3, 1)
DIGEST = "ab" * 32
OTHER = "cd" * 32

FOUND = DetectionOutcome(result=Outcome.FOUND, score=0.91, threshold=0.5, target_class="banana")
NOT_FOUND = DetectionOutcome(result=Outcome.NOT_FOUND, score=0.12, threshold=0.5)
UNSURE = DetectionOutcome(result=Outcome.INCONCLUSIVE, note="time limit reached")



def held(after: float, basis: BarBasis = BarBasis.ALL_HELD) -> DummyCheck:
    """The backdoor's dummy (toward the suspected 'banana'), held to the default policy's 2% bar."""
    return DummyCheck(family="patch", target="banana", before=0.49, after=after, bar=0.02, basis=basis, evidence=True)


# An attractor's dummy that is no evidence, held to its own rate before plus the tolerance (6.4% + 1 point).
WARP_RISEN = DummyCheck(family="warp", target="square", before=0.064, after=0.08, bar=0.074,
                        basis=BarBasis.NOT_EVIDENCE, evidence=False)
WARP_HELD_OWN = dataclasses.replace(WARP_RISEN, after=0.07)

GOOD = Verification(dummies=(held(0.01),), ca_drop=0.005, suspected="banana")
AT_BARS = Verification(dummies=(held(0.02),), ca_drop=0.02, suspected="banana")
HIGH_ASR = Verification(dummies=(held(0.30),), ca_drop=0.0, suspected="banana")
HIGH_DROP = Verification(dummies=(held(0.0),), ca_drop=0.08, suspected="banana")
RESIDUAL = Verification(dummies=(held(0.0),), ca_drop=0.0, residual_evidence=True, suspected="banana")
RISEN = Verification(dummies=(held(0.0, BarBasis.EVIDENCE), WARP_RISEN), ca_drop=0.0, suspected="banana")

SKIP_REQUIRED = SkippedStep("detect.warp", "budget exhausted", required=True)
SKIP_OPTIONAL = SkippedStep("export", "disabled by flag", required=False)
FAILURE = StageFailure("detect", "RuntimeError: out of memory")


def waiver(expires: dt.date, scope: str = DIGEST, wid: str = "W-1") -> dict:
    return {"id": wid, "scope": scope, "reason": "reviewed false positive", "owner": "alice",
            "expires": expires.isoformat()}


ACTIVE = waiver(TODAY)  # expires today: still holds today
EXPIRED = waiver(TODAY - dt.timedelta(days=1), wid="W-0")
ELSEWHERE = waiver(TODAY + dt.timedelta(days=30), scope=OTHER, wid="W-9")


def policy(mode="enforce", on_backdoor="purify", on_skip="inconclusive", on_failure="inconclusive",
           unsafe_blocks=True, tier="zero-data", waivers=(), fail_on=()) -> Policy:
    return Policy.model_validate({
        "version": 1, "mode": mode, "data": {"tier": tier},
        "detection": {"score_threshold": 0.5},
        "evidence": {"on_backdoor": on_backdoor, "on_required_skipped": on_skip, "on_stage_failure": on_failure,
                     "unsafe_serialisation_blocks": unsafe_blocks},
        "verification": {"max_asr": 0.02, "max_ca_drop": 0.02},
        "decision": {"fail_on": list(fail_on)},
        "waivers": list(waivers),
    })


def evidence(detection=NOT_FOUND, tier=DataTier.ZERO_DATA, digest=DIGEST, **fields) -> DecisionInput:
    return DecisionInput(checkpoint_digest=digest, data_tier=tier, detection=detection, **fields)


# one letter per action keeps the table's rows readable
P, D, U, I, B = Action.PASS, Action.PURIFIED, Action.PURIFY, Action.INCONCLUSIVE, Action.BLOCK  # noqa: E741

# id: (policy settings, evidence fields, expected action, expected enforced action, a reason fragment)
ENFORCE_TABLE = {
    "clean passes": ({}, {}, P, P, "no evidence of a backdoor found (score 0.1200 < threshold 0.5000)"),
    "finding asks for purification": ({}, {"detection": FOUND}, U, U, "passes only once purified"),
    "finding names score and target": ({}, {"detection": FOUND}, U, U, "suspected target class 'banana'"),
    "purified within bars is purified": ({}, {"detection": FOUND, "purification": GOOD}, D, D,
                                         "purified and verified"),
    "purified says what to deploy": ({}, {"detection": FOUND, "purification": GOOD}, D, D,
                                     "deploy the purified classifier, not the original weights"),
    "purified exactly at the bars is purified": ({}, {"detection": FOUND, "purification": AT_BARS}, D, D,
                                                 "ASR 2.00% <= 2.00%"),
    "purified with high ASR is blocked": ({}, {"detection": FOUND, "purification": HIGH_ASR}, B, B,
                                          "ASR 30.00% > 2.00%"),
    "purified with high CA drop is blocked": ({}, {"detection": FOUND, "purification": HIGH_DROP}, B, B,
                                              "CA drop 8.0 points > 2.0"),
    "purified but still detected is blocked": ({}, {"detection": FOUND, "purification": RESIDUAL}, B, B,
                                               "still finds backdoor evidence"),
    "purified but another dummy rose is blocked": ({}, {"detection": FOUND, "purification": RISEN}, B, B,
                                                   "a dummy toward another class rose: the warp trigger toward "
                                                   "'square' 6.40% -> 8.00%"),
    "block policy blocks a finding": ({"on_backdoor": "block"}, {"detection": FOUND}, B, B,
                                      "blocks a model with backdoor evidence"),
    "block policy ignores purification": ({"on_backdoor": "block"}, {"detection": FOUND, "purification": GOOD},
                                          B, B, "purification results were not used"),
    "clean ignores purification": ({}, {"purification": HIGH_ASR}, P, P, "purification results were not used"),
    "active waiver suppresses the finding": ({"waivers": [ACTIVE]}, {"detection": FOUND}, P, P,
                                             "waived by W-1 (owner alice, until 2026-03-01)"),
    "waiver matches a prefixed upper-case digest": ({"waivers": [ACTIVE]},
                                                    {"detection": FOUND, "digest": "sha256:" + DIGEST.upper()},
                                                    P, P, "waived by W-1"),
    "expired waiver re-activates the finding": ({"waivers": [EXPIRED]}, {"detection": FOUND}, U, U,
                                                "W-0 expired on 2026-02-28: its finding is active again"),
    "waiver for another checkpoint does nothing": ({"waivers": [ELSEWHERE]}, {"detection": FOUND}, U, U,
                                                   "passes only once purified"),
    "waiver does not excuse inconclusive detection": ({"waivers": [ACTIVE]}, {"detection": UNSURE}, I, I,
                                                      "detection was inconclusive (time limit reached)"),
    "inconclusive detection fails closed": ({}, {"detection": UNSURE}, I, I, "inconclusive"),
    "inconclusive detection can block": ({"on_skip": "block"}, {"detection": UNSURE}, B, B, "inconclusive"),
    "missing detection fails closed": ({}, {"detection": None}, I, I, "detection did not run"),
    "required skip fails closed": ({}, {"skipped": (SKIP_REQUIRED,)}, I, I,
                                   "required step detect.warp was skipped (budget exhausted)"),
    "required skip can block": ({"on_skip": "block"}, {"skipped": (SKIP_REQUIRED,)}, B, B, "detect.warp"),
    "optional skip is only reported": ({}, {"skipped": (SKIP_OPTIONAL,)}, P, P, "not required"),
    "stage failure fails closed": ({}, {"failures": (FAILURE,)}, I, I, "stage detect failed"),
    "stage failure can block": ({"on_failure": "block"}, {"failures": (FAILURE,)}, B, B, "out of memory"),
    "too weak a data tier fails closed": ({"tier": "few-shot"}, {"tier": DataTier.UNLABELLED}, I, I,
                                          "needs few-shot data, the run had unlabelled"),
    "a stronger data tier is enough": ({"tier": "unlabelled"}, {"tier": DataTier.FEW_SHOT}, P, P, "no evidence"),
    "unsafe serialisation blocks": ({}, {"unsafe_findings": ("os.system",)}, B, B,
                                    "unsafe serialisation (os.system)"),
    "unsafe serialisation reported only": ({"unsafe_blocks": False}, {"unsafe_findings": ("os.system",)}, P, P,
                                           "reported only"),
    "incomplete outranks purify": ({}, {"detection": FOUND, "skipped": (SKIP_REQUIRED,)}, I, I, "detect.warp"),
    "block outranks incomplete": ({"on_backdoor": "block"}, {"detection": FOUND, "failures": (FAILURE,)}, B, B,
                                  "stage detect failed"),
    "verified purification cannot excuse a skip": ({}, {"detection": FOUND, "purification": GOOD,
                                                        "skipped": (SKIP_REQUIRED,)}, I, I, "purified and verified"),
    "waived finding with purification results": ({"waivers": [ACTIVE]},
                                                  {"detection": FOUND, "purification": GOOD}, P, P, "not used"),
}


@pytest.mark.parametrize(("settings", "fields", "action", "enforced", "reason"), ENFORCE_TABLE.values(),
                         ids=ENFORCE_TABLE.keys())
def test_enforce_mode_decision_table(settings, fields, action, enforced, reason):
    decision = decide(evidence(**fields), policy(**settings), today=TODAY)
    assert (decision.action, decision.enforced) == (action, enforced)
    assert decision.exit_code is EXIT_CODES[action]
    assert any(reason in r for r in decision.reasons), decision.reasons


# id: (policy settings, evidence fields, expected action, expected enforced action, expected exit code)
RELAXED_TABLE = {
    "finding passes with the purification recorded": ({}, {"detection": FOUND}, P, U, ExitCode.PASS),
    "block policy finding passes with the block recorded": ({"on_backdoor": "block"}, {"detection": FOUND},
                                                            P, B, ExitCode.PASS),
    "missed bars pass with the block recorded": ({}, {"detection": FOUND, "purification": HIGH_ASR},
                                                 P, B, ExitCode.PASS),
    "unsafe file passes with the block recorded": ({}, {"unsafe_findings": ("os.system",)}, P, B, ExitCode.PASS),
    "clean passes": ({}, {}, P, P, ExitCode.PASS),
    "required skip is still inconclusive": ({}, {"skipped": (SKIP_REQUIRED,)}, I, I, ExitCode.INCONCLUSIVE),
    "stage failure still blocks when told to": ({"on_failure": "block"}, {"failures": (FAILURE,)}, B, B,
                                                ExitCode.BLOCKED),
    "missing detection is still inconclusive": ({}, {"detection": None}, I, I, ExitCode.INCONCLUSIVE),
    "incomplete finding is inconclusive": ({"on_backdoor": "block"}, {"detection": FOUND,
                                                                      "skipped": (SKIP_REQUIRED,)},
                                           I, B, ExitCode.INCONCLUSIVE),
}


@pytest.mark.parametrize("mode", ["warn", "dry-run"])
@pytest.mark.parametrize(("settings", "fields", "action", "enforced", "exit_code"), RELAXED_TABLE.values(),
                         ids=RELAXED_TABLE.keys())
def test_warn_and_dry_run_record_what_enforce_would_do(mode, settings, fields, action, enforced, exit_code):
    decision = decide(evidence(**fields), policy(mode=mode, **settings), today=TODAY)
    assert (decision.action, decision.enforced, decision.exit_code) == (action, enforced, exit_code)
    assert decision.mode is Mode(mode)
    would = [r for r in decision.reasons if r.startswith(f"{mode} mode: enforce would")]
    assert bool(would) == (enforced is not P)
    incomplete = [r for r in decision.reasons if "does not let an incomplete run pass" in r]
    assert bool(incomplete) == (action is not P)


def test_waivers_applied_and_expired_are_returned():
    rules = policy(waivers=[ACTIVE, EXPIRED, ELSEWHERE])
    decision = decide(evidence(detection=FOUND), rules, today=TODAY)
    assert [w.id for w in decision.waivers_applied] == ["W-1"]
    assert [w.id for w in decision.waivers_expired] == ["W-0"]
    assert decision.action is P


def test_waiver_lapses_the_day_after_it_expires():
    rules = policy(waivers=[ACTIVE])
    tomorrow = decide(evidence(detection=FOUND), rules, today=TODAY + dt.timedelta(days=1))
    assert tomorrow.action is U and tomorrow.waivers_applied == ()
    assert [w.id for w in tomorrow.waivers_expired] == ["W-1"]


def test_expired_waiver_on_a_clean_run_is_listed_without_changing_the_pass():
    decision = decide(evidence(), policy(waivers=[EXPIRED]), today=TODAY)
    assert decision.action is P and [w.id for w in decision.waivers_expired] == ["W-0"]


def test_fail_closed_flag_marks_incomplete_runs_only():
    assert decide(evidence(detection=None), policy(), today=TODAY).fail_closed
    assert not decide(evidence(detection=FOUND), policy(on_backdoor="block"), today=TODAY).fail_closed


@pytest.mark.parametrize(("asr", "ca_drop"), [(-0.1, 0.0), (1.5, 0.0), (float("nan"), 0.0), (0.0, 2.0)])
def test_purification_outcome_refuses_impossible_metrics(asr, ca_drop):
    with pytest.raises(ValueError):
        Verification(dummies=(held(asr),), ca_drop=ca_drop)


# --- the ready policies, end to end as the pipeline will call them ---------------------------------

@pytest.mark.parametrize("name", ["strict", "balanced", "permissive"])
def test_clean_model_passes_under_every_ready_policy(name):
    decision = decide(evidence(), resolve_policy(name).policy, today=TODAY)
    assert (decision.action, decision.exit_code) == (P, ExitCode.PASS)


def test_strict_purifies_a_backdoor_then_passes_or_blocks_on_the_bars():
    strict = resolve_policy("strict").policy
    assert decide(evidence(detection=FOUND), strict, today=TODAY).action is U
    assert decide(evidence(detection=FOUND, purification=GOOD), strict, today=TODAY).action is D
    missed = decide(evidence(detection=FOUND, purification=HIGH_ASR), strict, today=TODAY)
    assert (missed.action, missed.exit_code) == (B, ExitCode.BLOCKED)


def test_a_scoped_pass_says_which_dummies_the_asr_bar_held():
    scoped = Verification(dummies=(held(0.01, BarBasis.EVIDENCE), WARP_HELD_OWN), ca_drop=0.0, suspected="banana")
    decision = decide(evidence(detection=FOUND, purification=scoped), policy(), today=TODAY)
    assert decision.action is D
    assert ("purified and verified: ASR 1.00% <= 2.00% (the dummies that are backdoor evidence; each other one at "
            "most its rate before), CA drop 0.0 points <= 2.0") in decision.reasons
    plain = decide(evidence(detection=FOUND, purification=GOOD), policy(), today=TODAY)
    assert "purified and verified: ASR 1.00% <= 2.00%, CA drop 0.5 points <= 2.0" in plain.reasons
    unlabelled = Verification(dummies=(held(0.01),), ca_drop=0.005, labelled=False)
    assert ("purified and verified: ASR 1.00% <= 2.00%, disagreement with the original model's predictions 0.5 "
            "points <= 2.0") in decide(evidence(detection=FOUND, purification=unlabelled), policy(),
                                      today=TODAY).reasons


def test_strict_holds_every_dummy_and_balanced_the_evidence():
    assert resolve_policy("strict").policy.verification.dummies is DummyScope.ALL
    assert resolve_policy("balanced").policy.verification.dummies is DummyScope.EVIDENCE
    assert Policy.model_validate({"version": 1, "mode": "enforce", "detection": {"score_threshold": 0.5}}
                                 ).verification.dummies is DummyScope.ALL  # the default holds every one


def test_strict_blocks_when_a_stage_crashes():
    decision = decide(evidence(detection=None, failures=(FAILURE,)), resolve_policy("strict").policy, today=TODAY)
    assert (decision.action, decision.exit_code) == (B, ExitCode.BLOCKED)


def test_permissive_lets_a_backdoor_through_with_a_warning():
    decision = decide(evidence(detection=FOUND), resolve_policy("permissive").policy, today=TODAY)
    assert (decision.action, decision.enforced, decision.exit_code) == (P, U, ExitCode.PASS)
    assert "warn mode: enforce would purify the model" in decision.reasons


# --- invariants over the whole cross product -------------------------------------------------------

SEVERITY = [P, D, U, I, B]
CROSS = list(itertools.product(
    ["enforce", "warn", "dry-run"],
    [FOUND, NOT_FOUND, UNSURE, None],
    [(), (ACTIVE,), (EXPIRED,), (ELSEWHERE,)],
    [None, GOOD, HIGH_ASR, RESIDUAL],
    [(), (SKIP_OPTIONAL,), (SKIP_REQUIRED,)],
    [(), (FAILURE,)],
    [(), ("os.system",)],
    ["purify", "block"],
    ["inconclusive", "block"],
))


def test_no_combination_passes_an_incomplete_run_and_only_enforce_acts_on_evidence():
    for mode, detection, waivers, purified, skipped, failures, unsafe, on_backdoor, fail_closed in CROSS:
        rules = policy(mode=mode, on_backdoor=on_backdoor, on_skip=fail_closed, on_failure=fail_closed,
                       waivers=waivers)
        given = evidence(detection=detection, purification=purified, skipped=skipped, failures=failures,
                         unsafe_findings=unsafe)
        decision = decide(given, rules, today=TODAY)
        case = (mode, detection, waivers, purified, skipped, failures, unsafe, on_backdoor, fail_closed)
        incomplete = (detection is None or detection.result is Outcome.INCONCLUSIVE
                      or any(s.required for s in skipped) or bool(failures))
        assert decision.fail_closed == incomplete, case
        if incomplete:
            assert decision.action not in (P, D) and decision.exit_code is not ExitCode.PASS, case
        # with backdoor evidence, enforce passes plainly only under an active waiver; a purified pass is D
        if mode == "enforce" and decision.action is P:
            assert detection is not FOUND or waivers == (ACTIVE,), case
        if mode == "enforce":
            assert decision.action is decision.enforced, case
        else:
            assert decision.action in (P, Action(fail_closed)), case
            assert decision.action is not U, case
        assert SEVERITY.index(decision.action) <= SEVERITY.index(decision.enforced), case
        assert decision.exit_code is EXIT_CODES[decision.action], case
        assert decision.reasons, case
        assert decide(given, rules, today=TODAY) == decision, case


def test_a_verified_purification_is_its_own_outcome_not_a_pass():
    decision = decide(evidence(detection=FOUND, purification=GOOD), policy(), today=TODAY)
    assert (decision.action, decision.enforced, decision.exit_code) == (D, D, ExitCode.PASS)
    assert decision.action is not P
    assert decision.reasons[-1] == "deploy the purified classifier, not the original weights"


def test_policy_can_fail_on_a_purified_model():
    decision = decide(evidence(detection=FOUND, purification=GOOD), policy(fail_on=["purified"]), today=TODAY)
    assert (decision.action, decision.exit_code) == (D, ExitCode.BLOCKED)
    assert "the policy fails on a purified model (decision.fail_on: purified): exit 1" in decision.reasons
    # a clean model is untouched by fail_on: purified
    clean = decide(evidence(), policy(fail_on=["purified"]), today=TODAY)
    assert (clean.action, clean.exit_code) == (P, ExitCode.PASS)


@pytest.mark.parametrize("name", ["strict", "balanced", "permissive"])
def test_ready_policies_keep_exit_0_for_a_verified_purification(name):
    rules = resolve_policy(name).policy
    assert rules.decision.fail_on == ()
    assert rules.decision.purified_level.value == "warning"


def test_policy_refuses_an_unknown_fail_on_outcome():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        policy(fail_on=["clean"])
    with pytest.raises(ValidationError):
        policy(fail_on=["purified", "purified"])


def test_decision_is_frozen():
    decision = decide(evidence(), policy(), today=TODAY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.action = B  # type: ignore[misc]


# Outside its calibration's family: the calibrated result is another family's statistics speaking.
OTHER_FAMILY = "uncalibrated for this model family: built-in default.json was fitted on another family (x)"


def uncalibrated(result: Outcome, rf_score: float | None, rf_found: bool, target: str | None = None):
    return DetectionOutcome(result=result, score=1.0, threshold=0.9987, target_class=target,
                            uncalibrated=OTHER_FAMILY, reference_free_score=rf_score, reference_free_found=rf_found)


@pytest.mark.parametrize("name", ["strict", "balanced"])
@pytest.mark.parametrize("detection, action", [
    # the other family's score says "found", the reference-free score found nothing: inconclusive, never a finding
    (uncalibrated(Outcome.FOUND, 0.2, False), Action.INCONCLUSIVE),
    # ... and a "no evidence" there is no pass either
    (uncalibrated(Outcome.NOT_FOUND, 0.2, False), Action.INCONCLUSIVE),
    (uncalibrated(Outcome.NOT_FOUND, None, False), Action.INCONCLUSIVE),
    # a score over the bar toward a natural attractor is not conclusive
    (uncalibrated(Outcome.FOUND, 0.7, False), Action.INCONCLUSIVE),
    # conclusive reference-free evidence is a finding, acted on as the policy says (both purify first)
    (uncalibrated(Outcome.NOT_FOUND, 0.8, True, "cat"), Action.PURIFY),
])
def test_a_model_outside_its_calibrations_family_rests_on_the_reference_free_score(name, detection, action):
    loaded = resolve_policy(name).policy
    decision = decide(DecisionInput(checkpoint_digest=DIGEST, data_tier=DataTier.ZERO_DATA, detection=detection),
                      loaded, today=TODAY)
    assert decision.action is action
    assert decision.exit_code == (ExitCode.INCONCLUSIVE if action is Action.INCONCLUSIVE else ExitCode.BLOCKED)
    assert any(reason.startswith("uncalibrated for this model family") for reason in decision.reasons)
    if action is Action.PURIFY:
        assert "backdoor evidence found by the reference-free score (reference-free score 0.80 >= 0.50; " \
               "suspected target 'cat')" in decision.reasons
    else:
        assert not any(reason.startswith(str(Outcome.FOUND)) for reason in decision.reasons)


def test_in_family_detection_is_decided_as_before_whatever_the_reference_free_score():
    calibrated = dataclasses.replace(NOT_FOUND, reference_free_score=0.9, reference_free_found=True)
    decision = decide(DecisionInput(checkpoint_digest=DIGEST, data_tier=DataTier.ZERO_DATA, detection=calibrated),
                      policy(), today=TODAY)
    assert decision.action is Action.PASS
