"""A DECREE-style baseline, run beside cbpt-guard's detector so the gain is measured, not claimed.

DECREE (Feng et al., CVPR 2023) inverts a patch (mask and pattern) that makes
the encoder's features of stamped inputs collapse: it maximises their mean
pairwise cosine, multiplies or divides the mask penalty by 5 around a 0.99
cosine threshold, and calls an encoder trojaned when the mask needed covers
less than 10% of the image (PL1 < 0.1). No InfoNCE, no negatives, no
classifier evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.triggers import PatchTrigger

DECREE_COSINE = 0.99
DECREE_FACTOR = 5.0
DECREE_PL1_RULE = 0.1


@dataclass(frozen=True)
class DecreeResult:
    """PL1 at collapse (or the final PL1 when the threshold was never reached) and DECREE's own call."""

    pl1: float
    collapsed: bool
    trojaned: bool


def decree(classifier: ZeroShotClassifier, probes: torch.Tensor, *, steps: int = 150, batch_size: int = 32,
           lr: float = 0.1, seed: int = 0) -> DecreeResult:
    """Run the DECREE-style inversion on ``probes`` (N, 3, S, S) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    trigger = PatchTrigger(probes.shape[-1], generator=generator)
    optimiser = torch.optim.Adam(trigger.parameters(), lr=lr)
    penalty, best = 1.0, None
    for _ in range(steps):
        index = torch.randperm(len(probes), generator=generator)[:batch_size]
        features = classifier.features(trigger(probes[index]))  # (B, d)
        gram = features @ features.T  # (B, B)
        n = features.shape[0]
        cosine = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))
        loss = -cosine + penalty * trigger.size()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if float(cosine.detach()) >= DECREE_COSINE:
            penalty *= DECREE_FACTOR
            size = float(trigger.size().detach())
            best = size if best is None else min(best, size)
        else:
            penalty /= DECREE_FACTOR
    pl1 = best if best is not None else float(trigger.size())
    return DecreeResult(pl1, best is not None, best is not None and pl1 < DECREE_PL1_RULE)
