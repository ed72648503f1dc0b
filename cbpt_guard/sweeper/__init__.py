"""The sweeper behind ``cbpt-guard sweep`` and :func:`cbpt_guard.sweep`: many checkpoints on Ray, one report.

Staged cheapest first and content-addressed (see :mod:`.engine`).

Beside the pipeline, not above it: every model goes through the package's
public :func:`cbpt_guard.check` inside a Ray task, so a swept model gets the
same gate as one checked alone. Importing this package loads neither Ray nor
torch; :func:`cbpt_guard.sweeper.engine.run_sweep` imports Ray when it runs.
"""

from __future__ import annotations

from cbpt_guard.sweeper.records import Candidate, ModelResult, StageCounts, SweepResult, worst_exit_code

__all__ = ["Candidate", "ModelResult", "StageCounts", "SweepResult", "worst_exit_code"]
