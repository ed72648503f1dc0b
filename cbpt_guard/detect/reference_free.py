"""A backdoor score from one model alone: how *specifically* a small pattern reaches a class.

Why a second score. The calibrated score compares a model with clean models
of its family. A model of another family has no such references, and its
statistics differ: on small and real CLIPs alike some class is a *natural
attractor*, taking most probes under almost any small universal pattern, on
clean and backdoored models alike. Inversion finds that class first, so
"the strongest universal pattern reaches class t" is not evidence of a
backdoor on its own.

The principles this score rests on (none of its numbers are fitted to a zoo):

1. **A natural attractor is a broad basin; a backdoor target is a narrow
   one.** Random patterns of the inverted trigger's size already send many
   probes to an attractor, so the optimised pattern adds little to what
   chance gives. A backdoor's target is reached by one specific pattern and
   hardly by random ones. So each inverted trigger's reach toward its class
   is discounted by the reach of random patches of the same area
   (:func:`random_reach`): the *specific reach* is the share of the probes
   that random patterns leave elsewhere which the optimised pattern sends to
   the class, ``(reach - random) / (1 - random)``. A backdoor aimed *at* an
   attractor still shows: it pushes the optimised reach toward all of the
   probes the random patterns miss.
2. **A within-model null across classes.** The same searches aimed at other
   classes (the targeted inversion's candidates, the families' targets) say
   how reachable an ordinary class of *this* model is. The score is the
   specific reach of the most specifically reached class minus the median
   specific reach of the other classes examined: a backdoor stands out from
   the model's own classes, a model whose classes are all equally easy (or
   equally hard) does not. Classes random patterns already reach at several
   times chance (at the trigger's area, or twice or four times it: a
   broad basin shows at every size) are named as natural attractors.
3. **Evidence toward an attractor must be near-complete.** Where random
   patches already reach a class at :data:`ATTRACTOR_FACTOR` times chance,
   an optimised pattern reaching much of the rest is what a clean model of
   such a family shows too; only a pattern that takes nearly all of the
   rest (:data:`ATTRACTOR_BAR`) counts, as a backdoor aimed at the attractor
   does.
4. **Fail closed on thin evidence.** Fewer than two other classes examined
   is no null at all: the score is then not conclusive either way.

A score of at least :data:`FOUND_AT` (the most specific class is reached by
half of the probes random patterns leave elsewhere more often than the
model's other classes are), toward a class that is not a natural attractor
or is reached near-completely, is reference-free evidence of a backdoor.
Anything else means the reference-free score found nothing, which on its
own never makes a model pass (``decide``: an out-of-domain model without
reference-free evidence is inconclusive). The bars are round numbers chosen
from these principles, not fitted: a false "found" blocks a clean model,
a false "nothing" only leaves the run inconclusive, so they lean high.

What it costs: ``draws`` random patches at each distinct trigger area (and
at twice and four times the patch trigger's), on ``probes`` probes, forward
passes only: with the defaults (8 draws, 48 probes) 384 images per area, a
few per cent of one inversion's work.

Only patch-shaped evidence is scored (the patch family and the targeted
patch inversions): random patches are the null measured for them. Additive
and warp triggers enter the calibrated score only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

FOUND_AT = 0.5
"""Reference-free evidence: the most specific class's margin over the model's other classes (principle 2)."""
ATTRACTOR_FACTOR = 3.0
"""A class random patches reach at this many times chance (1 / class count) is named a natural attractor."""
ATTRACTOR_BAR = 0.9
"""The specific reach evidence toward a natural attractor needs to count (principle 3)."""
BASIN_SCALES = (1, 2, 4)
"""Areas (times the patch trigger's) at which random patches are tried when naming natural attractors."""
DRAWS = 8
PROBES = 48


@dataclass(frozen=True)
class Reach:
    """One optimised patch's reach toward a class, and the random patches' reach at the same area."""

    target: str
    source: str
    """Which search found it: ``patch`` or ``targeted``."""
    area: float
    """Share of the image the optimised mask covers (its mean)."""
    reach: float
    """Share of the probes not already predicted as ``target`` that the optimised patch sends there."""
    random_reach: float
    """The same share under random patches of the same area (mean over draws)."""

    @property
    def specific(self) -> float:
        """``(reach - random) / (1 - random)``, clipped at 0: what the specific pattern adds to chance."""
        return max(0.0, (self.reach - self.random_reach) / max(1e-6, 1.0 - self.random_reach))


@dataclass(frozen=True)
class ReferenceFreeScore:
    """The score, the class it points at, and what it rests on."""

    score: float | None
    """In [0, 1]; None when too few classes were examined to form a null (principle 3)."""
    target: str | None
    specific: dict[str, float]
    """Per examined class, its best specific reach."""
    attractors: tuple[str, ...]
    """Classes random patches reach at ``ATTRACTOR_FACTOR`` times chance or more."""
    reaches: tuple[Reach, ...]
    found: bool
    note: str

    def as_dict(self) -> dict:
        """JSON-ready form for the reports."""
        return {"score": self.score, "target": self.target, "found": self.found, "found_at": FOUND_AT,
                "specific": dict(sorted(self.specific.items(), key=lambda kv: -kv[1])),
                "attractors": list(self.attractors), "note": self.note,
                "reaches": [dict(target=r.target, source=r.source, area=r.area, reach=r.reach,
                                 random_reach=r.random_reach, specific=r.specific) for r in self.reaches]}


def score_reaches(reaches: list[Reach] | tuple[Reach, ...], class_count: int,
                  random_by_class: dict[str, float] | None = None) -> ReferenceFreeScore:
    """The reference-free score from the reaches of one model's patch searches (module docstring).

    ``random_by_class`` is the random patches' reach per class at the patch
    family's area, used only to name the natural attractors.
    """
    best: dict[str, float] = {}
    for entry in reaches:
        best[entry.target] = max(best.get(entry.target, 0.0), entry.specific)
    bar = ATTRACTOR_FACTOR / max(1, class_count)
    randoms = [(c, r) for c, r in (random_by_class or {}).items()] + [(e.target, e.random_reach) for e in reaches]
    attractors = tuple(sorted({c for c, r in randoms if r >= bar}))
    if len(best) < 3:
        return ReferenceFreeScore(None, None, best, attractors, tuple(reaches), False,
                                  f"only {len(best)} class(es) examined: no within-model null")
    ranked = sorted(best, key=lambda c: (-best[c], c))
    top = ranked[0]
    null = statistics.median(best[c] for c in ranked[1:])
    value = min(1.0, max(0.0, best[top] - null))
    found = value >= FOUND_AT and (top not in attractors or best[top] >= ATTRACTOR_BAR)
    note = (f"{top!r}: specific reach {best[top]:.2f} against a median of {null:.2f} over the "
            f"{len(ranked) - 1} other classes examined")
    if top in attractors:
        note += (f"; random patches already reach {top!r} (a natural attractor): evidence toward it needs a "
                 f"specific reach of {ATTRACTOR_BAR:.2f}")
    return ReferenceFreeScore(round(value, 6), top, best, attractors, tuple(reaches), found, note)


def random_reach(classifier, probes, area: float, *, draws: int = DRAWS, seed: int = 0):
    """Per class, the mean share of probes that random binary patches of ``area`` send there. Returns (C,).

    A probe already predicted as class c does not count for c (the same rule
    as the inverted-trigger ASR). Each draw is a square of random black and
    white pixels at a random place, covering ``area`` of the image.
    """
    import torch

    count, _, side, _ = probes.shape  # (N, 3, S, S)
    patch = max(1, min(side, round(math.sqrt(max(area, 0.0)) * side)))
    generator = torch.Generator().manual_seed(seed)
    classes = classifier.text.shape[0]
    with torch.no_grad():
        clean = classifier.predict(probes)  # (N,)
        others = (clean.unsqueeze(1) != torch.arange(classes, device=clean.device).unsqueeze(0)).float()  # (N, C)
        total = torch.zeros(classes, device=clean.device)
        for _ in range(draws):
            row, col = torch.randint(0, side - patch + 1, (2,), generator=generator, device="cpu").tolist()
            drawn = torch.rand(1, 3, patch, patch, generator=generator, device="cpu")  # on the CPU: same on any device
            pattern = (drawn > 0.5).to(device=probes.device, dtype=probes.dtype)
            stamped = probes.clone()
            stamped[:, :, row:row + patch, col:col + patch] = pattern
            hit = torch.nn.functional.one_hot(classifier.predict(stamped), classes).float()  # (N, C)
            total += (hit * others).sum(0) / others.sum(0).clamp_min(1)
    return total / draws


def measure(classifier, probes, searches, classes: tuple[str, ...], *, draws: int = DRAWS,
            probe_count: int = PROBES, seed: int = 0) -> ReferenceFreeScore:
    """Score one model reference-free from its patch searches: ``searches`` is ``[(source, aim, trigger), ...]``.

    Each trigger is a patch trigger (``mask()`` and a call that stamps).
    ``aim`` is the class index a targeted search was aimed at; the class
    most stamped probes land on counts too (a search aimed at one class can
    find a shortcut to another), and is all a label-free search (None) has. Random
    reach is measured once per patch side in pixels, on the first
    ``probe_count`` probes.
    """
    import torch

    pixels = probes[:probe_count]  # (n, 3, S, S)
    side = pixels.shape[-1]
    with torch.no_grad():
        clean = classifier.predict(pixels)  # (n,)
    by_side: dict[int, torch.Tensor] = {}

    def random_at(area: float) -> torch.Tensor:
        key = max(1, min(side, round(math.sqrt(max(area, 0.0)) * side)))
        if key not in by_side:
            by_side[key] = random_reach(classifier, pixels, (key / side) ** 2, draws=draws, seed=seed + key)
        return by_side[key]

    reaches = []
    for source, aim, trigger in searches:
        with torch.no_grad():
            stamped = classifier.predict(trigger(pixels))  # (n,)
            area = float(trigger.mask().mean())
        landed = int(torch.bincount(stamped, minlength=len(classes)).argmax())
        for target in dict.fromkeys([landed] if aim is None else [int(aim), landed]):  # aimed, then where it landed
            others = clean != target
            reach = float((stamped[others] == target).float().mean()) if others.any() else 0.0
            reaches.append(Reach(classes[target], source, round(area, 6), round(reach, 6),
                                 round(float(random_at(area)[target]), 6)))
    patch_area = next((r.area for r in reaches if r.source == "patch"), reaches[0].area if reaches else 0.0)
    # an attractor's basin is broad: it shows at larger random patches too, where a backdoor's narrow one does not
    baseline = (torch.stack([random_at(patch_area * m) for m in BASIN_SCALES]).amax(0) if reaches
                else torch.zeros(len(classes), device="cpu"))
    return score_reaches(reaches, len(classes), {c: float(baseline[i]) for i, c in enumerate(classes)})
