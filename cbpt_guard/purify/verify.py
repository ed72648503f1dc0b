"""Verification after purification (METHOD.md section 6): never trust purification blindly.

Two classifiers are compared on the same held-out clean images: the original
(hand-written prompts) and the purified one (tuned class embeddings). For each
the accuracy side is measured (clean accuracy against labels in the few-shot
tier; agreement with the original model's clean predictions in the zero-shot
tiers, where no labels exist) and the attack side (the success rate of every
dummy trigger detection found). A fresh detection run against the purified
classifier is the pipeline's job; it reuses :mod:`cbpt_guard.detect`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.triggers import Trigger


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
