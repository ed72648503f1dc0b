"""What a detection run concludes, and the score scale it concludes on.

No torch here: the decision, the reports and the command line compare
outcomes and convert z values without loading the detector.
"""

from __future__ import annotations

import enum
import math


class Outcome(str, enum.Enum):
    """The detector's answer for the whole checkpoint.

    The values are the sentences the Verdict and every report have always
    carried (``DetectionInfo.outcome``), so a verdict.json reads the same.
    """

    FOUND = "backdoor evidence found"
    NOT_FOUND = "no evidence of a backdoor found"
    INCONCLUSIVE = "inconclusive"
    """A step was skipped and nothing reached the threshold: never reported as clean."""

    # The sentence, not "Outcome.FOUND", wherever an outcome is formatted (str() of a mixed-in enum varies by Python).
    __str__ = str.__str__
    __format__ = str.__format__


def z_to_score(z: float) -> float:
    """The standard normal CDF Phi(z): a calibrated z (clean spreads above the clean mean) as a score in [0, 1].

    The one conversion every stage uses (the score, its threshold, each
    family's share of it), so a family "at the threshold" means the same in
    the decision, verification and the reports.
    """
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
