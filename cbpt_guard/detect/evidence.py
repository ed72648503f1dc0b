"""Evidence from an inverted trigger (METHOD.md section 4); the per-class anomaly is :mod:`cbpt_guard.detect.anomaly`'s.

The inversion itself is label-free; the classifier enters only here, to say
where the stamped probes land: how concentrated their zero-shot predictions
are, on which class, and how often the trigger flips a probe into that class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.detect.anomaly import AnomalyEvidence, class_anomaly
from cbpt_guard.triggers import Trigger

__all__ = ["AnomalyEvidence", "FamilyEvidence", "class_anomaly", "family_evidence"]


@dataclass(frozen=True)
class FamilyEvidence:
    """What one family's inverted trigger does to the probes."""

    family: str
    collapsed: bool
    size: float
    collapse_cos: float
    target_index: int
    concentration: float
    entropy: float
    inverted_asr: float
    class_histogram: tuple[int, ...]


def family_evidence(classifier: ZeroShotClassifier, probes: torch.Tensor, family: str, trigger: Trigger,
                    collapsed: bool, size: float, collapse_cos: float) -> FamilyEvidence:
    """Target concentration, normalised entropy and inverted-trigger ASR of ``trigger`` on ``probes``."""
    probes = probes.to(classifier.device)
    with torch.no_grad():
        clean_pred = classifier.predict(probes)  # (N,)
        stamped_pred = classifier.predict(trigger(probes))  # (N,)
    classes = classifier.text.shape[0]
    histogram = torch.bincount(stamped_pred, minlength=classes)  # (C,)
    target = int(histogram.argmax())
    share = histogram.float() / histogram.sum()
    entropy = float(-(share[share > 0] * share[share > 0].log()).sum() / math.log(classes))
    flippable = clean_pred != target
    asr = float((stamped_pred[flippable] == target).float().mean()) if flippable.any() else 0.0
    return FamilyEvidence(family, collapsed, size, collapse_cos, target, float(share[target]), entropy, asr,
                          tuple(int(v) for v in histogram))
