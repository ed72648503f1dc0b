"""How a backdoor score or threshold is written, in one place for every output.

The decision's reasons, the terminal summary, the HTML, Markdown and SARIF
reports and the pull-request table all print scores; one function keeps the
same value looking the same everywhere (a threshold shown as 1.00 in one place
and 0.998650 in another reads as two different bars).
"""

from __future__ import annotations

import math


def score_text(value: float | None) -> str:
    """A score in 0..1: six decimals at or above 0.99 (where the scores that matter crowd), else four.

    "n/a" when missing or not finite.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.6f}" if abs(value) >= 0.99 else f"{value:.4f}"
