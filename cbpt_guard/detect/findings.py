"""What detection's inversions showed, as typed records: one per inverted family, and the per-class anomaly.

They hold statistics only, never a trigger module: the inverted triggers travel
beside them (:attr:`cbpt_guard.detect.run.Evidence.triggers`), so scoring and
the reports never carry a live ``nn.Module`` and nothing is matched by identity.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyFinding:
    """What one inversion showed (a trigger family, or the targeted patch): the statistics, not the trigger."""

    family: str
    collapsed: bool
    size: float
    log_size: float
    collapse_cos: float
    target: str
    """The class the inverted trigger sends most probes to."""
    concentration: float
    entropy: float
    inverted_asr: float
    histogram: tuple[int, ...]
    steps_run: int
    seconds: float
    images: dict[str, str]
    """PNG data URIs of the trigger on a probe (clean, stamped, and its mask/pattern, perturbation or flow)."""


@dataclass(frozen=True)
class AnomalyFinding:
    """The per-class (Neural Cleanse style) targeted-trigger search: per class its cost, size and success rate."""

    costs: tuple[float, ...]
    sizes: tuple[float, ...]
    success: tuple[float, ...]
    suspect: str
    anomaly_index: float
