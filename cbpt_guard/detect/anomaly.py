"""The per-class anomaly (Neural Cleanse style): how cheap a small patch toward each class is, chunked and screened.

Each searched class c gets a mask and pattern trained to send the probes to c
under a fixed size penalty; its cost is the final objective, cross-entropy
toward c plus the penalty times the mask's mean. A class the model has a
shortcut to is far cheaper than the rest. The anomaly index is (median - min)
/ (1.4826 * MAD) over the costs; the cost is continuous, so the index stays
meaningful when few targeted triggers fully succeed within the budget.

Its cost must not grow with the class count (a 1,000-class deployment would
otherwise stamp 1,000 patches on every probe). Up to ``max_classes`` classes,
every class is searched, exactly as it always was. Above it:

1. **Screen.** The classes are dealt (seeded) into ``max_classes // 2``
   groups, and one patch per group is trained toward its group as a whole
   (the same objective, with the probability of the group's classes summed).
   A backdoor's target is the cheapest class to reach, so its group's patch
   goes to it; each class's screen cost is its own objective under its
   group's patch. The screen costs as much as searching half as many classes
   as ``max_classes``, whatever the class count.
2. **Search.** The ``max_classes - max_classes // 2`` classes cheapest in the
   screen (the suspects) and as many other classes drawn at random (the
   reference) are searched as above. The suspect is the cheapest searched
   class; the median of the index comes from the random reference, an
   unbiased sample of all classes, so the index measures the same thing as an
   exhaustive search's. Its spread is the larger of the reference's MAD and
   the MAD of every searched class about that median: a small reference can
   by chance be tightly bunched, and an index divided by a spread too small
   calls a clean model anomalous (measured: benchmarks/SCREEN.md).

Images go through the model in chunks of whole classes (:mod:`cbpt_guard.chunking`);
every class's objective depends only on its own patch, so the chunks' summed
gradients are the gradient of the whole step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cbpt_guard.chunking import Chunker, bounds, images_at_once
from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.progress import Deadline, Meter, Progress

MAD_SCALE = 1.4826
"""Makes the MAD a standard deviation for normally distributed costs."""


@dataclass(frozen=True)
class AnomalyEvidence:
    """Per-class targeted-trigger costs and the anomaly index of the cheapest.

    ``costs``, ``sizes`` and ``success`` hold one value per class, NaN for a
    class the search did not cover (only above ``max_classes``).
    """

    costs: tuple[float, ...]
    sizes: tuple[float, ...]
    success: tuple[float, ...]
    suspect_index: int
    anomaly_index: float
    steps: int
    ranking: tuple[int, ...] = ()
    """Every class, cheapest first: the searched ones by cost, then the others by screen cost."""
    searched: tuple[int, ...] = ()
    """The classes the search covered, in class order (all of them up to ``max_classes``)."""
    screen: tuple[float, ...] | None = None
    """Per class, its objective under its group's screen patch; None when every class was searched."""


@dataclass(frozen=True)
class _Search:
    """One patch search's outcome: per target, its final cost, mask size and share of probes sent to it."""

    costs: torch.Tensor  # (G,)
    sizes: torch.Tensor  # (G,)
    hits: torch.Tensor  # (G,)
    logits: list[torch.Tensor]  # G tensors (N, C): the stamped probes' logits under each target's patch


def class_anomaly(classifier: ZeroShotClassifier, probes: torch.Tensor, *, steps: int, seed: int,
                  penalty: float = 2.0, lr: float = 0.1, max_classes: int | None = None,
                  progress: Progress | None = None, stage: str = "per-class anomaly search",
                  deadline: Deadline | None = None) -> AnomalyEvidence:
    """Search a small patch toward each class (all of them up to ``max_classes``, else screened) and compare costs.

    ``probes`` (N, 3, S, S). Every step runs; ``deadline`` can only abort the
    search, and ``progress`` hears about it as ``stage`` (and the screen as
    ``stage`` + ", screen"). Deterministic for a seed.
    """
    classes, side = classifier.text.shape[0], probes.shape[-1]
    probes = probes.to(classifier.scale.device)
    if max_classes is None or classes <= max_classes:
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same start on every device
        mask_init = -3.0 + 0.1 * torch.randn(classes, 1, 1, side, side, generator=generator, device="cpu")
        pattern_init = torch.randn(classes, 1, 3, side, side, generator=generator, device="cpu")
        found = _search(classifier, probes, [[c] for c in range(classes)], mask_init, pattern_init, steps=steps,
                        penalty=penalty, lr=lr, progress=progress, stage=stage, deadline=deadline)
        costs = tuple(float(c) for c in found.costs)  # found's tensors are on the CPU
        suspect = int(found.costs.argmin())
        median = found.costs.median()
        mad = (found.costs - median).abs().median().clamp_min(1e-3)
        index = float((median - found.costs[suspect]) / (MAD_SCALE * mad))
        return AnomalyEvidence(costs, tuple(float(s) for s in found.sizes), tuple(float(h) for h in found.hits),
                               suspect, index, steps, ranking=tuple(sorted(range(classes), key=lambda c: costs[c])),
                               searched=tuple(range(classes)))
    return _screened(classifier, probes, steps=steps, seed=seed, penalty=penalty, lr=lr, max_classes=max_classes,
                     progress=progress, stage=stage, deadline=deadline)


def _screened(classifier: ZeroShotClassifier, probes: torch.Tensor, *, steps: int, seed: int, penalty: float,
              lr: float, max_classes: int, progress: Progress | None, stage: str,
              deadline: Deadline | None) -> AnomalyEvidence:
    """Screen every class by group, then search the suspects and a random reference (module docstring)."""
    classes, side = classifier.text.shape[0], probes.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    groups = screen_groups(classes, max(1, max_classes // 2), generator)
    mask_init = -3.0 + 0.1 * torch.randn(len(groups), 1, 1, side, side, generator=generator, device="cpu")
    pattern_init = torch.randn(len(groups), 1, 3, side, side, generator=generator, device="cpu")
    screen = _search(classifier, probes, groups, mask_init, pattern_init, steps=steps, penalty=penalty, lr=lr,
                     progress=progress, stage=f"{stage}, screen of {classes} classes in {len(groups)} groups",
                     deadline=deadline)
    screen_costs = torch.empty(classes, device="cpu")  # (C,)
    for group, members, logits in zip(range(len(groups)), groups, screen.logits):
        toward = -logits.log_softmax(dim=-1)[:, members].mean(dim=0)  # (|members|,)
        screen_costs[members] = toward + penalty * screen.sizes[group]
    order = sorted(range(classes), key=lambda c: float(screen_costs[c]))
    reference_count = max_classes // 2
    suspects = order[: max_classes - reference_count]
    others = order[len(suspects):]
    drawn = torch.randperm(len(others), generator=generator, device="cpu")[:reference_count]
    reference = sorted(others[int(i)] for i in drawn)
    searched = sorted(suspects + reference)
    mask_init = -3.0 + 0.1 * torch.randn(len(searched), 1, 1, side, side, generator=generator, device="cpu")
    pattern_init = torch.randn(len(searched), 1, 3, side, side, generator=generator, device="cpu")
    found = _search(classifier, probes, [[c] for c in searched], mask_init, pattern_init, steps=steps,
                    penalty=penalty, lr=lr, progress=progress,
                    stage=f"{stage}, {len(searched)} of {classes} classes", deadline=deadline)
    costs, sizes, success = [math.nan] * classes, [math.nan] * classes, [math.nan] * classes
    for row, c in enumerate(searched):
        costs[c], sizes[c], success[c] = float(found.costs[row]), float(found.sizes[row]), float(found.hits[row])
    suspect = min(searched, key=lambda c: costs[c])
    baseline = torch.tensor([costs[c] for c in reference], device="cpu") if len(reference) >= 3 else found.costs
    median = baseline.median()
    spread = max(float((baseline - median).abs().median()), float((found.costs - median).abs().median()))
    mad = torch.tensor(max(spread, 1e-3), device="cpu")
    index = float((median - costs[suspect]) / (MAD_SCALE * mad))
    covered = set(searched)
    unsearched = [c for c in order if c not in covered]
    ranking = tuple(sorted(searched, key=lambda c: costs[c]) + unsearched)
    return AnomalyEvidence(tuple(costs), tuple(sizes), tuple(success), suspect, index, steps, ranking=ranking,
                           searched=tuple(searched), screen=tuple(float(c) for c in screen_costs))


def screen_groups(classes: int, count: int, generator: torch.Generator) -> list[list[int]]:
    """``classes`` dealt into ``count`` groups in a seeded random order; group sizes differ by at most one."""
    order = torch.randperm(classes, generator=generator, device="cpu").tolist()
    count = min(count, classes)
    return [sorted(order[start::count]) for start in range(count)]


def _search(classifier: ZeroShotClassifier, probes: torch.Tensor, targets: Sequence[Sequence[int]],
            mask_init: torch.Tensor, pattern_init: torch.Tensor, *, steps: int, penalty: float, lr: float,
            progress: Progress | None, stage: str, deadline: Deadline | None) -> _Search:
    """Optimise one patch per target (a list of classes) toward it, all targets in each step, chunked.

    The objective of a target is the mean over probes of -log of the summed
    probability of its classes (cross-entropy for a single class) plus
    ``penalty`` times the mask's mean. ``mask_init`` (G, 1, 1, S, S) and
    ``pattern_init`` (G, 1, 3, S, S) are the logits the patches start from.
    """
    count, images, device = len(targets), probes.shape[0], classifier.scale.device
    mask_logit = torch.nn.Parameter(mask_init.to(device))  # (G, 1, 1, S, S)
    pattern_logit = torch.nn.Parameter(pattern_init.to(device))  # (G, 1, 3, S, S)
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=lr)
    singles = all(len(t) == 1 for t in targets)
    membership = None if singles else _membership(targets, classifier.text.shape[0]).to(device)  # (G, C) bool
    chunker = Chunker(max(1, images_at_once(classifier, count * images, grad=True) // images), stage, "classes")

    def objective(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = torch.sigmoid(mask_logit[start:end])  # (g, 1, 1, S, S)
        pattern = torch.sigmoid(pattern_logit[start:end])  # (g, 1, 3, S, S)
        stamped = ((1 - mask) * probes.unsqueeze(0) + mask * pattern).flatten(0, 1)  # (g * N, 3, S, S)
        logits = classifier(stamped)  # (g * N, C)
        if singles:
            wanted = torch.tensor([t[0] for t in targets[start:end]], device=device).repeat_interleave(images)
            loss = F.cross_entropy(logits, wanted, reduction="none")  # (g * N,)
        else:
            allowed = membership[start:end].repeat_interleave(images, dim=0)  # (g * N, C)
            loss = -logits.log_softmax(dim=-1).masked_fill(~allowed, -math.inf).logsumexp(dim=-1)  # (g * N,)
        sizes = mask.mean(dim=(1, 2, 3, 4))  # (g,)
        return loss.view(end - start, -1).mean(1) + penalty * sizes, sizes, logits

    def one_step(size: int) -> None:
        optimiser.zero_grad(set_to_none=True)
        for start, end in bounds(count, size):
            costs, _, _ = objective(start, end)
            costs.sum().backward()

    meter = Meter(progress, stage, steps, deadline, work=count * images)  # G x N stamped images per step
    for step in range(1, steps + 1):
        chunker.run(one_step)
        optimiser.step()
        meter.advance(step)
    return chunker.run(lambda size: _final(objective, targets, images, count, size, membership, device))


@torch.no_grad()
def _final(objective, targets: Sequence[Sequence[int]], images: int, count: int, size: int,
           membership: torch.Tensor | None, device: torch.device) -> _Search:
    """The trained patches' costs, sizes, hit rates and logits, chunk by chunk, all returned on the CPU."""
    costs, sizes, hits, logits = [], [], [], []
    for start, end in bounds(count, size):
        cost, mask_size, chunk_logits = objective(start, end)  # (g,), (g,), (g * N, C)
        predicted = chunk_logits.argmax(dim=-1).view(end - start, images)  # (g, N)
        if membership is None:
            wanted = torch.tensor([t[0] for t in targets[start:end]], device=device)[:, None]  # (g, 1)
            hit = (predicted == wanted).float().mean(dim=1)  # (g,)
        else:
            hit = membership[start:end].gather(1, predicted).float().mean(dim=1)  # (g,)
        costs.append(cost)
        sizes.append(mask_size)
        hits.append(hit)
        logits.extend(chunk_logits.view(end - start, images, -1).cpu().unbind(0))
    return _Search(torch.cat(costs).cpu(), torch.cat(sizes).cpu(), torch.cat(hits).cpu(), logits)


def _membership(targets: Sequence[Sequence[int]], classes: int) -> torch.Tensor:
    """(G, C) bool: which classes each target holds."""
    members = torch.zeros(len(targets), classes, dtype=torch.bool, device="cpu")
    for row, target in enumerate(targets):
        members[row, list(target)] = True
    return members
