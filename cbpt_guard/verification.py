"""What verifying a purified model found, as typed records: one per dummy trigger, and the whole result.

:mod:`cbpt_guard.purify.verify` fills them from the measurements;
:mod:`cbpt_guard.decide` weighs them against the policy's bars and words them.
They live below both, because those two are sibling layers that must not
import each other. No English here: the decision and the reports say things.
"""

from __future__ import annotations

import dataclasses
import enum
import math

RISE_TOLERANCE = 0.01
"""How far a dummy that is no evidence may rise before it counts as strengthened (1 point).

Tuning the prompts flips borderline stamped images both ways, so a rate measured
again moves a little without anything being learned: on the bundled example the
warp dummy, a natural attractor, moved -0.2 points on one CPU and +0.3 (one image
of 336) on another, and without a tolerance that one image blocked the model.
"""


class BarBasis(str, enum.Enum):
    """Why a dummy was held to the bar it was held to."""

    EVIDENCE = "evidence"
    """The dummy is backdoor evidence (``verification.dummies: evidence``): held to ``max_asr``."""
    NOT_EVIDENCE = "not-evidence"
    """Not evidence under ``dummies: evidence``: held to ``max(max_asr, rate before + RISE_TOLERANCE)``."""
    ALL_HELD = "all-held"
    """Every dummy held to ``max_asr``: scope ``all``, or (failing closed) no dummy was evidence."""


def _fraction(name: str, value: float, low: float = 0.0) -> None:
    if not (math.isfinite(value) and low <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction in [{low:g}, 1], got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DummyCheck:
    """One dummy trigger verified: the class it draws images to, its ASR before and after, and its bar."""

    family: str
    target: str
    """The class the inverted trigger sent probes to in the original model."""
    before: float
    """ASR against the original classifier (0 when it was not measured)."""
    after: float
    """ASR against the purified classifier."""
    bar: float
    basis: BarBasis
    evidence: bool
    """Whether this dummy is backdoor evidence: it draws to the suspected target, or its own z clears the threshold."""

    def __post_init__(self) -> None:
        _fraction("before", self.before)
        _fraction("after", self.after)
        if not (math.isfinite(self.bar) and self.bar >= 0.0):  # may pass 1: a rate before of 100% plus the tolerance
            raise ValueError(f"bar must be a non-negative rate, got {self.bar}")

    @property
    def held(self) -> bool:
        """Whether the dummy is held to ``max_asr`` (its ASR counts toward the verified ASR)."""
        return self.basis is not BarBasis.NOT_EVIDENCE

    @property
    def met(self) -> bool:
        """Whether its ASR after purification is within its bar."""
        return self.after <= self.bar


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verification:
    """Verification of the purified model: every dummy checked, the accuracy cost, the fresh detection run.

    ``ca_drop`` is original CA minus purified CA (negative when accuracy rose),
    or without labels the share of held-out images whose prediction changed;
    ``residual_evidence`` is whether re-running detection on the purified
    classifier still finds a backdoor (or could not tell).
    """

    dummies: tuple[DummyCheck, ...] = ()
    ca_drop: float
    residual_evidence: bool = False
    labelled: bool = True
    """Whether ``ca_drop`` is a drop in CA against labels."""
    suspected: str | None = None
    """The class detection suspected, against which the worst dummy's target is compared."""

    def __post_init__(self) -> None:
        _fraction("ca_drop", self.ca_drop, low=-1.0)

    @property
    def held(self) -> tuple[DummyCheck, ...]:
        """The dummies held to ``max_asr``."""
        return tuple(dummy for dummy in self.dummies if dummy.held)

    @property
    def asr(self) -> float:
        """The worst ASR among the held dummies (0 with none)."""
        return max((dummy.after for dummy in self.held), default=0.0)

    @property
    def scoped(self) -> bool:
        """Whether ``asr`` covers only the dummies that are backdoor evidence (``dummies: evidence`` took effect)."""
        return len(self.held) < len(self.dummies)

    @property
    def risen(self) -> tuple[DummyCheck, ...]:
        """Each dummy not held to ``max_asr`` whose ASR ended above its own bar, by family."""
        return tuple(sorted((d for d in self.dummies if not d.held and not d.met), key=lambda d: d.family))

    @property
    def worst(self) -> DummyCheck | None:
        """The held dummy that set ``asr`` (the first by family on a tie), None with none held.

        Small models have natural attractors, so the worst dummy is not always the
        backdoor's; a reader of a blocked verdict needs to know which one it was.
        """
        held = sorted(self.held, key=lambda d: d.family)
        return max(held, key=lambda d: d.after) if held else None
