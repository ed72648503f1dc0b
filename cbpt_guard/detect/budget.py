"""Detection budgets: how much work a run does, and which of its settings a calibration depends on.

A calibration's statistics are what clean models show *at one budget*: at 20
inversion steps a trigger is bigger and collapses less than at 300, so a clean
model's 20-step evidence sits far from the 300-step mean and a backdoored
model's may sit near it. Scores are comparable only at the budget the
calibration was fitted at (:func:`scoring_settings`); the time limit is not
part of it, because it never changes a result (it only aborts a run).

The defaults of the settings a policy sets (steps, batch size, families,
targeted classes, anomaly classes, time limit) are the policy schema's
(:class:`~cbpt_guard.policy.schema.DetectionBudget`), the one source of them.

No torch here, so ``policy validate`` can compare budgets without loading it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cbpt_guard.policy.schema import DetectionBudget, DetectionSettings

_POLICY = DetectionBudget()
"""The policy schema's detection budget defaults."""
_POLICY_FAMILIES = tuple(family.value for family in DetectionSettings.model_fields["families"].default)

DEFAULT_TIME_LIMIT_S = _POLICY.time_limit_s
"""Generous: a full default detection of the examples takes about a minute on two idle cores."""


@dataclass(frozen=True)
class InversionBudget:
    """How much work one family's inversion does; the policy sets steps and batch size."""

    steps: int = _POLICY.steps
    batch_size: int = _POLICY.batch_size
    lr: float = 0.1
    check_every: int = 10
    check_size: int = 48
    collapse_cos: float = 0.75
    temperature: float = 0.07
    penalty_init: float = 1.0
    penalty_factor: float = 1.5
    text_weight: float = 1.0
    """Weight of the text term, when an inversion is aimed at a class (``invert(..., toward=...)``)."""


@dataclass(frozen=True)
class DetectBudget:
    """Everything that bounds one detection run (the policy sets it)."""

    families: tuple[str, ...] = _POLICY_FAMILIES
    probes: int = 96
    inversion: InversionBudget = field(default_factory=InversionBudget)
    anomaly_steps: int = 30
    anomaly_probes: int = 12
    targeted_classes: int = _POLICY.targeted_classes
    """How many classes the targeted patch inversion is aimed at, cheapest anomaly cost first (0: skip);
    each aimed inversion runs half the family steps. Four: a label-consistent zoo model's target ranked
    fourth among the anomaly's costs."""
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    """Wall-clock limit of the whole run: past it the run aborts, inconclusive. It never shortens a stage."""
    anomaly_classes: int = _POLICY.anomaly_classes
    """How many classes the per-class anomaly searches: every class up to this many, else the suspects of a screen
    and a random reference (cbpt_guard/detect/anomaly.py), so its cost stays flat in the class count."""


ADDED_SETTINGS = {"anomaly_classes": _POLICY.anomaly_classes}
"""Scoring settings added after calibrations were first fitted, with the value a calibration that lacks one is read as.

A calibration fitted before ``anomaly_classes`` existed searched every class
of its references. The shipped one's references have 22 classes, fewer than
the default, and the default searches every class of such models exactly as
before, so it is read as fitted at the default. (A calibration of one's own,
fitted before then on models with more classes than that, is read the same
way; refit it to be exact.)"""


def scoring_settings(budget: DetectBudget) -> dict:
    """The settings of ``budget`` that change a detection's evidence, as a JSON-ready dict (no time limit)."""
    return {"families": list(budget.families), "probes": budget.probes, "anomaly_steps": budget.anomaly_steps,
            "anomaly_probes": budget.anomaly_probes, "anomaly_classes": budget.anomaly_classes,
            "targeted_classes": budget.targeted_classes, "inversion": dataclasses.asdict(budget.inversion)}


def budget_differences(fitted: dict | None, run: DetectBudget) -> list[str]:
    """What differs between a calibration's budget (``fitted``) and ``run``'s, e.g. ``["steps 20 (fitted at 300)"]``.

    An empty list means the calibration applies. A calibration that records no
    budget (``None``) cannot be shown to apply, so that is a difference too.
    """
    if fitted is None:
        return ["the calibration records no budget"]
    wanted = scoring_settings(run)
    flat_fitted, flat_wanted = ADDED_SETTINGS | _flatten(fitted), _flatten(wanted)
    differences = []
    for name in sorted(set(flat_fitted) | set(flat_wanted)):
        have, want = flat_fitted.get(name, "unset"), flat_wanted.get(name, "unset")
        if _normal(have) != _normal(want):
            differences.append(f"{name} {_show(want)} (fitted at {_show(have)})")
    return differences


def calibrate_command(budget: DetectBudget, out: str = "calibration.json") -> str:
    """The command that fits a calibration for ``budget`` on the user's own clean models."""
    flags = [f"--steps {budget.inversion.steps}", f"--batch-size {budget.inversion.batch_size}",
             f"--n-probes {budget.probes}", f"--families {','.join(budget.families)}",
             f"--anomaly-steps {budget.anomaly_steps}", f"--anomaly-classes {budget.anomaly_classes}",
             f"--targeted {budget.targeted_classes}"]
    return f"cbpt-guard calibrate CLEAN_MODEL [CLEAN_MODEL ...] --out {out} {' '.join(flags)}"


def uncalibrated_reason(source: str, budget: DetectBudget, differences: list[str]) -> str:
    """Why a calibration (named by ``source``) does not apply to ``budget``, and how to fit one that does."""
    return (f"uncalibrated: the detection budget differs from the one {source} was fitted at "
            f"({'; '.join(differences)}), so its score would mean nothing; fit a calibration for this budget on "
            f"clean models of your own with `{calibrate_command(budget)}` and name it in the policy "
            f"(detection.calibration)")


def _flatten(settings: dict) -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _normal(value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
