"""The decision: a pure function from what the run found to what the policy says to do, with reasons.

:func:`decide` does no I/O and reads no clock (``today`` is passed in), so the
same evidence, policy and day always give the same decision. The pipeline calls
it twice: after detection (the answer may be *purify*), and again after
purification with its outcome (then *purified* if the purified model meets the
policy's bars, else *block*).

*purified* is its own outcome, never a plain *pass*: what may be deployed then
is the purified classifier, not the checkpoint that was checked. It exits 0
unless the policy lists it under ``decision.fail_on`` (then 1, like a block).

Two kinds of outcome are kept apart:

- **evidence** (a backdoor finding, unsafe serialisation): acted on in ``enforce``
  mode; in ``warn`` and ``dry-run`` modes recorded as what enforce would have done,
  and the model passes (exit 0);
- **fail-closed** (a required step skipped, a stage failed, detection
  inconclusive, too weak a data tier): a run that could not look properly never
  passes, in any mode. The policy chooses *inconclusive* (exit 3) or *block* (exit 1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from cbpt_guard.detect.domain import domain_outcome
from cbpt_guard.detect.outcome import Outcome
from cbpt_guard.errors import ExitCode
from cbpt_guard.figures import score_text
from cbpt_guard.policy.schema import (
    BackdoorAction,
    DataTier,
    FailOn,
    Mode,
    Policy,
    VerificationBars,
    Waiver,
)
from cbpt_guard.verdict import PURIFIED_ADVICE, Action
from cbpt_guard.verification import DummyCheck, Verification

if TYPE_CHECKING:  # torch; the decision itself never needs it
    from cbpt_guard.detect.run import DetectionReport

# When causes disagree the most severe wins: a block is final, an incomplete run
# is not worth purifying, and purification comes before any pass.
_SEVERITY = {Action.PASS: 0, Action.PURIFIED: 1, Action.PURIFY: 2, Action.INCONCLUSIVE: 3, Action.BLOCK: 4}

# A model waiting for purification is not fit to ship as it is, so "purify" as a
# final answer exits like a block; the pipeline turns it into purified or block.
# A verified purification exits 0 unless the policy's decision.fail_on lists it.
EXIT_CODES = {
    Action.PASS: ExitCode.PASS,
    Action.PURIFIED: ExitCode.PASS,
    Action.PURIFY: ExitCode.BLOCKED,
    Action.INCONCLUSIVE: ExitCode.INCONCLUSIVE,
    Action.BLOCK: ExitCode.BLOCKED,
}

_VERBS = {
    Action.PASS: "pass the model",
    Action.PURIFIED: "pass the purified classifier (not the original weights)",
    Action.PURIFY: "purify the model",
    Action.INCONCLUSIVE: "report the run inconclusive",
    Action.BLOCK: "block the model",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionOutcome:
    """What detection concluded, with the score and threshold it compared."""

    result: Outcome
    score: float | None = None
    threshold: float | None = None
    target_class: str | None = None
    """The class triggered inputs drift to, when one stands out."""
    note: str | None = None
    """Why the result is inconclusive (a budget ran out, the evidence disagreed)."""
    uncalibrated: str | None = None
    """Set when the model is outside its calibration's family ("uncalibrated for this model family: ..."):
    ``result`` and ``score`` are then another family's statistics and the decision rests on the
    reference-free score (:func:`cbpt_guard.detect.domain.domain_outcome`)."""
    reference_free_score: float | None = None
    reference_free_found: bool = False
    """Whether the reference-free score is itself conclusive evidence (``detect.reference_free``)."""

    @classmethod
    def from_report(cls, report: DetectionReport) -> DetectionOutcome:
        """What a :class:`~cbpt_guard.detect.run.DetectionReport` concluded; its skipped steps are the note."""
        note = "; ".join(f"{name}: {why}" for name, why in report.skipped) or None
        free = report.reference_free or {}
        return cls(result=report.outcome, score=report.score, threshold=report.threshold,
                   target_class=report.suspected_target, note=note, uncalibrated=report.uncalibrated,
                   reference_free_score=free.get("score"), reference_free_found=bool(free.get("found")))


@dataclasses.dataclass(frozen=True)
class SkippedStep:
    """A step the run did not do, why, and whether the policy needed it."""

    name: str
    reason: str
    required: bool


@dataclasses.dataclass(frozen=True)
class StageFailure:
    """A stage that raised or otherwise could not finish; always fails closed."""

    stage: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecisionInput:
    """Everything :func:`decide` looks at; the pipeline fills it from the stages' results.

    ``detection`` is None when detection did not run at all. ``purification`` is
    set only on the second call, after purification ran.
    """

    checkpoint_digest: str
    """SHA-256 of the checkpoint's weights file, the scope waivers are matched against."""
    data_tier: DataTier
    detection: DetectionOutcome | None
    unsafe_findings: tuple[str, ...] = ()
    skipped: tuple[SkippedStep, ...] = ()
    failures: tuple[StageFailure, ...] = ()
    purification: Verification | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The gate's answer and why.

    ``action`` is what happens in this run's mode; ``enforced`` what ``enforce``
    mode would do with the same evidence (equal to ``action`` in enforce mode).
    ``fail_closed`` says the run was incomplete, which no mode lets pass.
    """

    action: Action
    enforced: Action
    mode: Mode
    reasons: tuple[str, ...]
    waivers_applied: tuple[Waiver, ...]
    waivers_expired: tuple[Waiver, ...]
    fail_closed: bool
    exit_code: ExitCode


@dataclasses.dataclass
class _Tally:
    """The causes found so far, kept apart by kind (see the module docstring)."""

    reasons: list[str] = dataclasses.field(default_factory=list)
    evidence: list[Action] = dataclasses.field(default_factory=list)
    fail_closed: list[Action] = dataclasses.field(default_factory=list)
    applied: tuple[Waiver, ...] = ()
    expired: tuple[Waiver, ...] = ()


def decide(evidence: DecisionInput, policy: Policy, *, today: dt.date) -> Decision:
    """Apply ``policy`` to ``evidence`` on the day ``today`` and return the decision with its reasons.

    Pure: no I/O, no clock. Never returns a pass when a required step was skipped,
    a stage failed or detection did not reach a result, whatever the mode.
    """
    tally = _Tally()
    _weigh_unsafe_serialisation(evidence, policy, tally)
    _weigh_completeness(evidence, policy, tally)
    _weigh_detection(evidence, policy, today, tally)
    enforced = _worst(tally.evidence + tally.fail_closed)
    if policy.mode is Mode.ENFORCE:
        action = enforced
    else:
        action = _worst(tally.fail_closed)
        if enforced is not Action.PASS:
            tally.reasons.append(f"{policy.mode.value} mode: enforce would {_VERBS[enforced]}")
        if action is not Action.PASS:
            tally.reasons.append(f"{policy.mode.value} mode does not let an incomplete run pass")
    code = EXIT_CODES[action]
    if action is Action.PURIFIED and FailOn.PURIFIED in policy.decision.fail_on:
        code = ExitCode.BLOCKED
        tally.reasons.append("the policy fails on a purified model (decision.fail_on: purified): exit 1")
    return Decision(
        action=action,
        enforced=enforced,
        mode=policy.mode,
        reasons=tuple(tally.reasons),
        waivers_applied=tally.applied,
        waivers_expired=tally.expired,
        fail_closed=bool(tally.fail_closed),
        exit_code=code,
    )


def _worst(actions: list[Action]) -> Action:
    return max(actions, key=_SEVERITY.__getitem__, default=Action.PASS)


def _weigh_unsafe_serialisation(evidence: DecisionInput, policy: Policy, tally: _Tally) -> None:
    if not evidence.unsafe_findings:
        return
    found = ", ".join(evidence.unsafe_findings)
    if policy.evidence.unsafe_serialisation_blocks:
        tally.evidence.append(Action.BLOCK)
        tally.reasons.append(f"unsafe serialisation ({found}): the policy blocks unsafe files")
    else:
        tally.reasons.append(f"unsafe serialisation ({found}): reported only, the policy does not block on it")


def _weigh_completeness(evidence: DecisionInput, policy: Policy, tally: _Tally) -> None:
    """Everything that makes the run incomplete: each fails closed as the policy says."""
    on_skip = Action(policy.evidence.on_required_skipped.value)
    on_failure = Action(policy.evidence.on_stage_failure.value)
    required_tier = policy.data.tier
    if evidence.data_tier.rank < required_tier.rank:
        tally.fail_closed.append(on_skip)
        tally.reasons.append(f"the policy needs {required_tier.value} data, the run had "
                             f"{evidence.data_tier.value}: {on_skip.value}")
    for failure in evidence.failures:
        tally.fail_closed.append(on_failure)
        tally.reasons.append(f"stage {failure.stage} failed ({failure.message}): {on_failure.value}")
    for step in evidence.skipped:
        if step.required:
            tally.fail_closed.append(on_skip)
            tally.reasons.append(f"required step {step.name} was skipped ({step.reason}): {on_skip.value}")
        else:
            tally.reasons.append(f"step {step.name} was skipped, not required ({step.reason})")
    if evidence.detection is None:
        tally.fail_closed.append(on_skip)
        tally.reasons.append(f"detection did not run: {on_skip.value}")
    elif evidence.detection.uncalibrated is not None:
        tally.reasons.append(f"{evidence.detection.uncalibrated}{_reference_free_text(evidence.detection)}")
        if _result(evidence.detection) is Outcome.INCONCLUSIVE:
            tally.fail_closed.append(on_skip)
            tally.reasons.append(f"detection was inconclusive (no reference-free evidence, and no calibration for "
                                 f"this model family to tell a clean model from a backdoored one): {on_skip.value}")
    elif evidence.detection.result is Outcome.INCONCLUSIVE:
        note = f" ({evidence.detection.note})" if evidence.detection.note else ""
        tally.fail_closed.append(on_skip)
        tally.reasons.append(f"detection was inconclusive{note}: {on_skip.value}")


def _weigh_detection(evidence: DecisionInput, policy: Policy, today: dt.date, tally: _Tally) -> None:
    """The backdoor finding, its waivers, and (on the second call) the purification outcome."""
    digest = evidence.checkpoint_digest.strip().lower().removeprefix("sha256:")
    scoped = [w for w in policy.waivers if w.scope == digest]
    tally.expired = tuple(w for w in scoped if w.is_expired(today))
    active = tuple(w for w in scoped if not w.is_expired(today))
    detection = evidence.detection
    found = detection is not None and _result(detection) is Outcome.FOUND
    if detection is not None and _result(detection) is Outcome.NOT_FOUND:
        tally.reasons.append(f"{Outcome.NOT_FOUND}{_score_text(detection, '<')}")
    if found and detection.uncalibrated is not None:
        tally.reasons.append(f"{Outcome.FOUND} by the reference-free score{_reference_free_text(detection)}")
    elif found:
        tally.reasons.append(f"{Outcome.FOUND}{_score_text(detection, '>=')}")
    if found:
        for waiver in tally.expired:
            tally.reasons.append(f"waiver {waiver.id} expired on {waiver.expires.isoformat()}: "
                                 "its finding is active again")
        if active:
            tally.applied = active
            for waiver in active:
                tally.reasons.append(f"the finding is waived by {waiver.id} (owner {waiver.owner}, until "
                                     f"{waiver.expires.isoformat()}): {waiver.reason}")
        elif policy.evidence.on_backdoor is BackdoorAction.BLOCK:
            tally.evidence.append(Action.BLOCK)
            tally.reasons.append("the policy blocks a model with backdoor evidence")
        else:
            tally.evidence.append(_weigh_purification(evidence.purification, policy, tally))
            return
    if evidence.purification is not None:
        tally.reasons.append("purification results were not used: the policy did not call for purification")


def _weigh_purification(outcome: Verification | None, policy: Policy, tally: _Tally) -> Action:
    """Purify if not yet done; once done, pass only if every bar is met."""
    if outcome is None:
        tally.reasons.append("the policy calls for purification; the model passes only once purified and verified")
        return Action.PURIFY
    bars = policy.verification
    misses = verification_misses(outcome, bars)
    if misses:
        tally.reasons.append("the purified model misses the policy's bars: " + "; ".join(misses))
        return Action.BLOCK
    held = " (the dummies that are backdoor evidence; each other one at most its rate before)" if outcome.scoped else ""
    drop = "CA drop" if outcome.labelled else "disagreement with the original model's predictions"
    tally.reasons.append(f"purified and verified: ASR {outcome.asr:.2%} <= {bars.max_asr:.2%}{held}, {drop} "
                         f"{outcome.ca_drop * 100:.1f} points <= {bars.max_ca_drop * 100:.1f}")
    tally.reasons.append(PURIFIED_ADVICE)
    return Action.PURIFIED


def verification_misses(outcome: Verification, bars: VerificationBars) -> tuple[str, ...]:
    """Every bar the purified model misses, worded once for the decision's reasons and the report."""
    misses = []
    if outcome.asr > bars.max_asr:
        which = f" ({worst_wording(outcome.worst, outcome.suspected)})" if outcome.worst else ""
        misses.append(f"dummy-trigger ASR {outcome.asr:.2%} > {bars.max_asr:.2%}{which}")
    if outcome.ca_drop > bars.max_ca_drop:
        what = "CA drop" if outcome.labelled else "disagreement with the original model's predictions (no labels)"
        misses.append(f"{what} {outcome.ca_drop * 100:.1f} points > {bars.max_ca_drop * 100:.1f}")
    misses += [f"a dummy toward another class rose: {risen_wording(dummy)}" for dummy in outcome.risen]
    if outcome.residual_evidence:
        misses.append("a fresh detection run still finds backdoor evidence")
    return tuple(misses)


def risen_wording(dummy: DummyCheck) -> str:
    """A dummy that rose above its own bar, e.g. "the warp trigger toward 'square' 6.40% -> 7.00%"."""
    return f"the {dummy.family} trigger toward {dummy.target!r} {dummy.before:.2%} -> {dummy.after:.2%}"


def worst_wording(dummy: DummyCheck, suspected: str | None) -> str:
    """Which held dummy set the ASR, e.g. "the warp trigger toward 'square', not the suspected 'cross'"."""
    if suspected is None or dummy.target == suspected:
        return f"the {dummy.family} trigger toward {dummy.target!r}"
    return f"the {dummy.family} trigger toward {dummy.target!r}, not the suspected {suspected!r}"


def _result(detection: DetectionOutcome) -> Outcome:
    """Detection's result once the model's family is known: outside its calibration's, the reference-free one."""
    return domain_outcome(detection.result, detection.uncalibrated, detection.reference_free_found)


def _reference_free_text(detection: DetectionOutcome) -> str:
    """`` (reference-free score 0.71 >= 0.50; suspected target 'cat')`` or ``< 0.50``, from what is known."""
    from cbpt_guard.detect.reference_free import FOUND_AT

    if detection.reference_free_score is None:
        return " (no reference-free score: too few classes examined)"
    relation = ">=" if detection.reference_free_score >= FOUND_AT else "<"
    if detection.reference_free_found:
        after = f"; suspected target {detection.target_class!r}" if detection.target_class else ""
    else:
        after = ", toward a natural attractor: not conclusive" if relation == ">=" else ""
    return f" (reference-free score {detection.reference_free_score:.2f} {relation} {FOUND_AT:.2f}{after})"


def _score_text(detection: DetectionOutcome, relation: str) -> str:
    """`` (score 0.999999 >= threshold 0.998650; suspected target 'banana')`` from whatever is known.

    Scores are written by :func:`cbpt_guard.figures.score_text`, as every report writes them.
    """
    parts = []
    if detection.score is not None and detection.threshold is not None:
        parts.append(f"score {score_text(detection.score)} {relation} threshold {score_text(detection.threshold)}")
    elif detection.score is not None:
        parts.append(f"score {score_text(detection.score)}")
    if detection.target_class is not None and relation == ">=":
        parts.append(f"suspected target class {detection.target_class!r}")
    return f" ({'; '.join(parts)})" if parts else ""
