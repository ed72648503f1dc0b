"""Which of detection's inverted triggers CBPT trains against (METHOD.md section 5).

Detection inverts one trigger per family (patch, additive, warp) whatever the
model; on a backdoored model usually one or two of them reproduce the backdoor
and the rest are the small model's universal adversarial patterns. METHOD.md
says to use "the dummy triggers of every family that showed evidence". The
rule here makes that concrete: a family showed evidence when its calibrated z
(standardised against clean reference models, positive = backdoor-like) is at
least :data:`EVIDENCE_Z`; when no family reaches it, the single most anomalous
family is used, so purification always has a trigger to train against.

Measured on the zoo (benchmarks/PURIFICATION.md, "Which dummy triggers"), this
rule and "all three families" gave about the same mean real-trigger ASR and
clean accuracy at the 16-shot tier (the rule left a family out on every one of
the 21 models); the rule is kept because it trains on fewer stamped views
(cheaper) and leaves out triggers that carry no backdoor evidence, which can
only cost clean accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from cbpt_guard.triggers import Trigger

EVIDENCE_Z = 2.0
"""A family's calibrated z at or above this counts as evidence (two clean spreads above the clean mean)."""


class HasFamilies(Protocol):
    """What the rule reads of detection's evidence: :attr:`cbpt_guard.detect.run.Evidence.families`."""

    families: list[dict]


def select_dummy_triggers(evidence: HasFamilies, zs: Mapping[str, float], *,
                          min_z: float = EVIDENCE_Z) -> list[Trigger]:
    """The inverted triggers CBPT should use, most anomalous family first.

    ``evidence.families`` holds one dict per inverted family with keys
    "family" and "trigger"; ``zs`` maps family names to calibrated z values
    (``cbpt_guard.detect.calibration.score(...)[1]``; other keys such as
    "anomaly" are ignored). Families without a z count as no evidence. Returns
    every trigger whose family has ``z >= min_z``, or the single most anomalous
    one when none does; an empty list only when detection inverted nothing.
    Ties keep detection's family order.
    """
    inverted = [family for family in evidence.families if family.get("trigger") is not None]
    if not inverted:
        return []
    z_of = {family["family"]: _finite(zs.get(family["family"])) for family in inverted}
    ranked = sorted(inverted, key=lambda family: -z_of[family["family"]])  # stable: ties keep detection's order
    chosen = [family["trigger"] for family in ranked if z_of[family["family"]] >= min_z]
    return chosen or [ranked[0]["trigger"]]


def _finite(z: float | None) -> float:
    """A z usable for ranking: missing or NaN counts as no evidence at all."""
    return -math.inf if z is None or math.isnan(z) else float(z)
