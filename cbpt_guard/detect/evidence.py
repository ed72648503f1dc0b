"""Evidence from an inverted trigger (METHOD.md section 4), and the per-class anomaly index.

The inversion itself is label-free; the classifier enters only here, to say
where the stamped probes land: how concentrated their zero-shot predictions
are, on which class, and how often the trigger flips a probe into that class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.progress import Deadline, Meter, Progress
from cbpt_guard.triggers import Trigger


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


@dataclass(frozen=True)
class AnomalyEvidence:
    """Per-class targeted-trigger costs (Neural Cleanse style) and the anomaly index of the cheapest."""

    costs: tuple[float, ...]
    sizes: tuple[float, ...]
    success: tuple[float, ...]
    suspect_index: int
    anomaly_index: float
    steps: int


def class_anomaly(classifier: ZeroShotClassifier, probes: torch.Tensor, *, steps: int, seed: int,
                  penalty: float = 2.0, lr: float = 0.1, progress: Progress | None = None,
                  stage: str = "per-class anomaly search", deadline: Deadline | None = None) -> AnomalyEvidence:
    """Optimise one small patch per class, all classes at once, and compare how cheap each target is.

    Each class c gets a mask and pattern trained to send the probes to c under
    a fixed size penalty. Its cost is the final objective: cross-entropy toward
    c plus the penalty times the mask's mean. A class the model has a shortcut
    to is far cheaper than the rest. The anomaly index is (median - min) /
    (1.4826 * MAD) over the costs; the cost is continuous, so the index stays
    meaningful when few targeted triggers fully succeed within the budget.
    Every step runs; ``deadline`` can only abort the search, and ``progress``
    hears about it as ``stage``.
    """
    classes, side = classifier.text.shape[0], probes.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    mask_logit = torch.nn.Parameter(-3.0 + 0.1 * torch.randn(classes, 1, 1, side, side, generator=generator))
    pattern_logit = torch.nn.Parameter(torch.randn(classes, 1, 3, side, side, generator=generator))
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=lr)
    targets = torch.arange(classes).repeat_interleave(probes.shape[0])  # (C * N,)

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, pattern = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)  # (C, 1, 1|3, S, S)
        stamped = ((1 - mask) * probes.unsqueeze(0) + mask * pattern).flatten(0, 1)  # (C * N, 3, S, S)
        logits = classifier(stamped)  # (C * N, C)
        per_class = torch.nn.functional.cross_entropy(logits, targets, reduction="none").view(classes, -1).mean(1)
        sizes = mask.mean(dim=(1, 2, 3, 4))  # (C,)
        return per_class + penalty * sizes, sizes, logits

    meter = Meter(progress, stage, steps, deadline)
    for step in range(1, steps + 1):
        costs, _, _ = objective()
        optimiser.zero_grad(set_to_none=True)
        costs.sum().backward()
        optimiser.step()
        meter.advance(step)
    with torch.no_grad():
        costs, sizes, logits = objective()
        hits = (logits.argmax(dim=-1) == targets).float().view(classes, -1).mean(dim=1)  # (C,)
    suspect = int(costs.argmin())
    median = costs.median()
    mad = (costs - median).abs().median().clamp_min(1e-3)
    index = float((median - costs[suspect]) / (1.4826 * mad))
    return AnomalyEvidence(tuple(float(c) for c in costs), tuple(float(s) for s in sizes),
                           tuple(float(h) for h in hits), suspect, index, steps)
