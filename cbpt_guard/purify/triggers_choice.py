"""Which of detection's inverted triggers CBPT trains against (METHOD.md section 5).

Detection inverts one trigger per family (patch, additive, warp) whatever the
model; on a backdoored model usually one or two of them reproduce the backdoor
and the rest are the small model's universal adversarial patterns. METHOD.md
says to use "the dummy triggers of every family that showed evidence". The
default here is every inverted family, and ``min_z`` gives the evidence rule
(a family's calibrated z, standardised against clean reference models, at
least ``min_z``; the single most anomalous family when none reaches it).

The purification benchmark compares the two on the zoo (benchmarks/PURIFICATION.md,
"Which dummy triggers", written by benchmarks/purification.py): every family
left the lower mean real-trigger ASR at about the same clean accuracy, with
the earlier loss and with today's. Every family stays the default: a family
under the bar can still carry part of the backdoor (detection's z measures
how unusual the inversion is, not whether it reaches the attacker's region).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from cbpt_guard.triggers import Trigger

EVIDENCE_Z = 2.0
"""The evidence rule's bar, when asked for: two clean spreads above the clean mean."""


def select_dummy_triggers(triggers: Mapping[str, Trigger | None], zs: Mapping[str, float], *,
                          min_z: float | None = None) -> list[str]:
    """The families whose inverted triggers CBPT should use, most anomalous first.

    ``triggers`` maps each inverted family to its trigger, in detection's order
    (:attr:`cbpt_guard.detect.run.Evidence.triggers`; a family without one is
    left out); ``zs`` maps family names to calibrated z values
    (``cbpt_guard.detect.calibration.score(...)[1]``; other keys such as
    "anomaly" are ignored). Families without a z rank last. With ``min_z``
    None every family is returned; otherwise those with ``z >= min_z``, or the
    single most anomalous one when none does. An empty list only when
    detection inverted nothing. Ties keep detection's order.
    """
    inverted = [family for family, trigger in triggers.items() if trigger is not None]
    if not inverted:
        return []
    z_of = {family: _finite(zs.get(family)) for family in inverted}
    ranked = sorted(inverted, key=lambda family: -z_of[family])  # stable: ties keep detection's order
    if min_z is None:
        return ranked
    chosen = [family for family in ranked if z_of[family] >= min_z]
    return chosen or [ranked[0]]


def _finite(z: float | None) -> float:
    """A z usable for ranking: missing or NaN counts as no evidence at all."""
    return -math.inf if z is None or math.isnan(z) else float(z)
