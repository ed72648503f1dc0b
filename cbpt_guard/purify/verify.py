"""Verification after purification (METHOD.md section 6): never trust purification blindly.

Two classifiers are compared on the same held-out clean images: the original
(hand-written prompts) and the purified one (tuned class embeddings). For each
the accuracy side is measured (clean accuracy against labels in the few-shot
tier; agreement with the original model's clean predictions in the zero-shot
tiers, where no labels exist) and the attack side (the success rate of every
dummy trigger detection found). :func:`verify` then holds each dummy to its bar
under the policy and returns typed records (:mod:`cbpt_guard.verification`)
that :mod:`cbpt_guard.decide` weighs and words. A fresh detection run against
the purified classifier is :mod:`cbpt_guard.purify.api`'s; it reuses :mod:`cbpt_guard.detect`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.detect.outcome import Outcome, z_to_score
from cbpt_guard.policy.schema import DummyScope, VerificationBars
from cbpt_guard.triggers import Trigger
from cbpt_guard.verdict import DetectionInfo
from cbpt_guard.verification import RISE_TOLERANCE, BarBasis, DummyCheck, Verification

if TYPE_CHECKING:  # api imports this module
    from cbpt_guard.detect.run import DetectionReport
    from cbpt_guard.purify.api import Residual


@dataclass(frozen=True)
class DummyTrigger:
    """An inverted trigger from detection and the class it sent probes to in the original model."""

    family: str
    trigger: Trigger
    target_index: int


@dataclass(frozen=True)
class ClassifierMetrics:
    """One classifier on the held-out images: accuracy side and attack side, as fractions."""

    clean_accuracy: float | None
    agreement: float
    dummy_asr: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def trigger_success(classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor,
                    dummy: DummyTrigger) -> float:
    """Share of images not of the target class that the stamped copy sends to the target. (N, 3, S, S), (N,)."""
    keep = labels != dummy.target_index  # (N,)
    if not bool(keep.any()):
        return 0.0
    predictions = classifier.predict(dummy.trigger(images[keep]))  # (M,)
    return float((predictions == dummy.target_index).float().mean())


@torch.no_grad()
def measure(classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor | None,
            reference: torch.Tensor, dummies: list[DummyTrigger]) -> ClassifierMetrics:
    """Metrics of ``classifier`` on held-out ``images`` (N, 3, S, S).

    ``labels`` (N,) are the true classes (few-shot tier) or None; ``reference``
    (N,) holds the original model's clean predictions, against which agreement
    is measured and which stand in for labels in the dummy-ASR count when no
    labels exist.
    """
    predictions = classifier.predict(images)  # (N,)
    truth = reference if labels is None else labels
    accuracy = None if labels is None else float((predictions == labels).float().mean())
    agreement = float((predictions == reference).float().mean())
    asr = {dummy.family: trigger_success(classifier, images, truth, dummy) for dummy in dummies}
    return ClassifierMetrics(clean_accuracy=accuracy, agreement=agreement, dummy_asr=asr)


def accuracy_drop(before: ClassifierMetrics, after: ClassifierMetrics) -> float:
    """How much accuracy purification cost, as a fraction (negative when it rose).

    With labels: CA before minus CA after. Without labels the original model
    is the reference, so the drop is the share of held-out images whose
    prediction changed (1 - agreement): stricter, since a change that fixed a
    mistake counts against it too.
    """
    if before.clean_accuracy is not None and after.clean_accuracy is not None:
        return before.clean_accuracy - after.clean_accuracy
    return 1.0 - after.agreement


def dummy_evidence(targets: Mapping[str, str], families: Iterable[str],
                   detection: DetectionInfo | None) -> dict[str, bool]:
    """Per dummy family, whether it is backdoor evidence, in the order of ``families``.

    A dummy is evidence when it draws images to the suspected target (``targets``
    names each family's class) or its own family's z, as the score used it,
    would alone have cleared the detection threshold: a second backdoor toward
    another class stays held. With no detection to judge by, every one is.
    """
    if detection is None:
        return dict.fromkeys(families, True)
    suspected = detection.suspected_target
    z_of = {f.family: f.z for f in detection.families}
    return {family: (suspected is not None and targets.get(family) == suspected)
            or z_of.get(family) is None or z_to_score(z_of[family]) >= detection.threshold
            for family in families}


def dummy_bars(max_asr: float, scope: DummyScope, evidence: Mapping[str, bool],
               before: Mapping[str, float]) -> dict[str, tuple[float, BarBasis]]:
    """Per dummy family, the ASR bar verification holds it to and why.

    ``evidence`` says, per family, whether its dummy is evidence of the backdoor
    (:func:`dummy_evidence`); ``before`` is each dummy's ASR before purification.
    Under scope ``all`` every dummy is held to ``max_asr``. Under ``evidence`` a
    dummy that is not evidence (an inverted pattern toward one of the small
    model's natural attractors, typical of clean models) is held to
    ``max(max_asr, before + RISE_TOLERANCE)``: purification need not remove what
    was never the backdoor, but must not strengthen it beyond the noise of
    measuring it again (:data:`~cbpt_guard.verification.RISE_TOLERANCE`). Fail
    closed: with no dummy that is evidence, every one is held.
    """
    if scope is not DummyScope.EVIDENCE or not any(evidence.values()):
        return {family: (max_asr, BarBasis.ALL_HELD) for family in evidence}
    return {family: ((max_asr, BarBasis.EVIDENCE) if backdoor
                     else (max(max_asr, before.get(family, 0.0) + RISE_TOLERANCE), BarBasis.NOT_EVIDENCE))
            for family, backdoor in evidence.items()}


def verify(dummies: Sequence[DummyTrigger], before: ClassifierMetrics, after: ClassifierMetrics, ca_drop: float,
           residual: bool, classes: Sequence[str], detection: DetectionInfo | None,
           bars: VerificationBars) -> Verification:
    """Hold every dummy measured after purification to its bar, and gather what the decision weighs.

    ``residual`` is whether a fresh detection run on the purified classifier
    still finds (or cannot rule out) a backdoor; ``ca_drop`` is clamped to
    [-1, 1]. The dummies keep the order in which they were measured.
    """
    targets = {dummy.family: classes[dummy.target_index] for dummy in dummies}
    evidence = dummy_evidence(targets, after.dummy_asr, detection)
    bar_of = dummy_bars(bars.max_asr, bars.dummies, evidence, before.dummy_asr)
    checks = tuple(DummyCheck(family=family, target=targets[family], before=before.dummy_asr.get(family, 0.0),
                              after=asr, bar=bar_of[family][0], basis=bar_of[family][1], evidence=evidence[family])
                   for family, asr in after.dummy_asr.items())
    return Verification(dummies=checks, ca_drop=max(-1.0, min(1.0, ca_drop)), residual_evidence=residual,
                        labelled=after.clean_accuracy is not None,
                        suspected=detection.suspected_target if detection is not None else None)


def recheck_wording(recheck: DetectionReport, residual: Residual, found: bool) -> str:
    """E.g. "no evidence toward 'cross' (strongest remaining pull: patch trigger -> 'circle', z 5.72)".

    Plain words for the report's reader about the fresh detection run (``found``:
    whether it counts as residual evidence); the report's glossary says what the
    pull and its z are.
    """
    if recheck.outcome is Outcome.INCONCLUSIVE:
        return "inconclusive: " + "; ".join(f"{name}: {why}" for name, why in recheck.skipped)
    toward = f" toward {residual.target!r}" if residual.target else ""
    head = f"{Outcome.FOUND}{toward}" if found else f"no evidence{toward}"
    strongest = residual.strongest
    if strongest is None:
        return head
    return f"{head} (strongest remaining pull: {strongest[0]} trigger -> {strongest[1]!r}, z {strongest[2]:.2f})"
