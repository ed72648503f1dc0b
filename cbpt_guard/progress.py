"""Progress of long stages, and the time limit that may abort them.

Library code never prints: a long stage (an inversion, the per-class anomaly
search, prompt tuning, re-detection, the export's parity check) reports
:class:`ProgressEvent` records through the ``progress`` callback it was given,
and the CLI decides how to show them (one line rewritten on a terminal, plain
lines in a CI log). A :class:`Meter` reports about ten times per stage, at
fixed step counts, so a log's length does not depend on the machine's speed.

Budgets are counted in steps, never in seconds: a stage always runs all its
steps, so its result is a function of the inputs, the policy and the seed. The
clock only decides whether to give up: a :class:`Deadline` that has passed
aborts the run with :class:`TimeLimitExceeded` (exit 3, inconclusive), it never
shortens a stage and lets the shortened result count.

A deadline given the run's planned work (in image passes through the encoder)
also estimates the whole run's time from its first steps, says so once in the
progress output, and gives up at once when the part of it whose cost model is
sure (the inversions) is past :data:`TOO_LARGE_FACTOR` times the limit: a model too large for its budget
(a 224-pixel CLIP on a CPU runner, say) ends in seconds, inconclusive with the
estimate as its reason, instead of running until the limit. The margin keeps
a run that might still fit from being cut off by a noisy first step.

No torch here: the CLI imports this module to print.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cbpt_guard.errors import TimeLimitExceeded

REPORTS_PER_STAGE = 10
ESTIMATE_AFTER_STEPS = 3
"""The time estimate is said after this many steps of the run's first metered stage (or its last step, if fewer)."""
TOO_LARGE_FACTOR = 2.0
"""Give up at once when the estimate is past this many times the limit (see the module docstring)."""
FORWARD_ONLY = 1 / 3
"""An image's cost through the encoder forward only, against 1 forward and backward: the estimate's unit."""


@dataclass(frozen=True)
class ProgressEvent:
    """How far one long stage has got: ``step`` of ``total`` after ``elapsed_s`` seconds."""

    stage: str
    step: int
    total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the stage's rate so far; None before its first step."""
        if self.step <= 0:
            return None
        return self.elapsed_s / self.step * max(0, self.total - self.step)

    def __str__(self) -> str:
        share = 100 * self.step // max(1, self.total)
        eta = "ETA --" if self.eta_s is None else f"ETA {format_seconds(self.eta_s)}"
        elapsed = format_seconds(self.elapsed_s)
        return f"{self.stage}: step {self.step}/{self.total} ({share}%), {elapsed} elapsed, {eta}"


Progress = Callable[["ProgressEvent | str"], None]
"""The callback every long stage reports through: a :class:`ProgressEvent`, or a plain line between stages."""


def silent(event: ProgressEvent | str) -> None:
    """The default callback: report nothing."""


def format_seconds(seconds: float) -> str:
    """E.g. "42 s", "3m05s", "1h02m"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Deadline:
    """The wall-clock limit of one run (a detection, say), shared by all its stages.

    ``check`` raises :class:`TimeLimitExceeded` once ``limit_s`` seconds have
    passed since the deadline was made; ``what`` and ``hint`` word the message
    (what ran past its limit, and how to give it more time).
    """

    limit_s: float
    what: str = "the run"
    hint: str = ""
    started: float = field(default_factory=lambda: time.perf_counter())
    planned: float = 0.0
    """The whole run's work in image passes (:data:`FORWARD_ONLY`); 0 makes no estimate."""
    sure: float | None = None
    """The part of ``planned`` whose cost model is sure (the inversions); only it can stop a run early, so a
    stage whose cost is modelled loosely (the per-class search) never cuts off a run that would fit. None: all."""
    done: float = 0.0
    estimate_s: float | None = None
    """The run's estimated seconds in all, once said."""

    def check(self, stage: str, step: int, total: int) -> None:
        """Raise :class:`TimeLimitExceeded` if the limit has passed (``stage`` at ``step`` of ``total`` says where)."""
        elapsed = time.perf_counter() - self.started
        if elapsed > self.limit_s:
            hint = f"; {self.hint}" if self.hint else ""
            raise TimeLimitExceeded(
                f"{self.what} ran past its time limit of {format_seconds(self.limit_s)} during {stage} (step {step} "
                f"of {total}); a result cut short would depend on the machine's load, so none is given{hint}")

    def spend(self, work: float, stage_work: float, stage_seconds: float, where: tuple[str, int, int],
              progress: Progress) -> None:
        """Count ``work`` more image passes; estimate the run's time from the stage so far, say it once.

        ``stage_work`` passes took ``stage_seconds`` in the current stage
        (``where``: its name, step and total). Raises
        :class:`TimeLimitExceeded` when the estimate is past
        :data:`TOO_LARGE_FACTOR` times the limit.
        """
        self.done += work
        if self.planned <= 0 or self.estimate_s is not None or stage_work <= 0:
            return
        stage, step, total = where
        elapsed = time.perf_counter() - self.started
        rate = stage_seconds / stage_work  # seconds per image pass
        estimate = elapsed + rate * max(0.0, self.planned - self.done)
        at_least = elapsed + rate * max(0.0, (self.planned if self.sure is None else self.sure) - self.done)
        measured = f"from the first {step} step{'s' if step != 1 else ''} of {stage}"
        if at_least > TOO_LARGE_FACTOR * self.limit_s:
            hint = f"; {self.hint}" if self.hint else ""
            raise TimeLimitExceeded(
                f"{self.what} would take {'' if self.sure is None else 'at least '}about {format_seconds(at_least)} "
                f"({measured}), more than "
                f"{TOO_LARGE_FACTOR:g} times its time limit of {format_seconds(self.limit_s)}: the model is too large "
                f"for this budget on this machine, so the run stopped before spending the limit{hint}")
        if step >= min(ESTIMATE_AFTER_STEPS, total):
            self.estimate_s = estimate
            progress(f"{self.what}: estimated {format_seconds(estimate)} in all ({measured}; time limit "
                     f"{format_seconds(self.limit_s)})")


class Meter:
    """Counts one stage's steps: reports about ``REPORTS_PER_STAGE`` times and checks the deadline at every step.

    ``work`` is what one step costs in image passes (:data:`FORWARD_ONLY`); with
    a deadline that plans the run's work, the first steps estimate its time.
    """

    def __init__(self, progress: Progress | None, stage: str, total: int, deadline: Deadline | None = None,
                 work: float = 0.0):
        self.progress = progress or silent
        self.stage, self.total, self.deadline, self.work = stage, max(1, int(total)), deadline, work
        self.every = max(1, math.ceil(self.total / REPORTS_PER_STAGE))
        self.started = time.perf_counter()
        self.progress(ProgressEvent(stage, 0, self.total, 0.0))

    def advance(self, step: int) -> None:
        """Step ``step`` (1-based) is done."""
        if self.deadline is not None:
            self.deadline.check(self.stage, step, self.total)
            self.deadline.spend(self.work, step * self.work, time.perf_counter() - self.started,
                                (self.stage, step, self.total), self.progress)
        if step % self.every == 0 or step == self.total:
            self.progress(ProgressEvent(self.stage, step, self.total, time.perf_counter() - self.started))
