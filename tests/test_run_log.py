"""The run log: one failure path for every stage, and the decision made on frozen facts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest

from cbpt_guard.decide import DecisionInput
from cbpt_guard.errors import NothingScannableError, OutOfMemory, TimeLimitExceeded, UnsafeCheckpointError
from cbpt_guard.policy import resolve_policy
from cbpt_guard.run_log import RunLog


def _log() -> RunLog:
    return RunLog(resolve_policy("strict"), 0, dt.date(2026, 3, 1), lambda line: None)


def test_the_decision_is_made_on_frozen_facts_once_per_distinct_set():
    log = _log()
    facts = log.facts()
    assert isinstance(facts, DecisionInput)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.failures = ()
    first = log.decision()
    assert log.decision() is first  # nothing new: not decided again
    log.fail("export", time.perf_counter(), RuntimeError("disk full"))
    second = log.decision()
    assert second is not first and any("stage export failed (RuntimeError: disk full)" in r for r in second.reasons)


@pytest.mark.parametrize(("stage", "error", "state", "counts_as"), [
    ("intake", UnsafeCheckpointError("evil.pkl: os.system", findings=("os.system",)), "failed", "unsafe"),
    ("intake", NothingScannableError("nothing scannable"), "failed", "skipped"),
    ("intake", RuntimeError("a crafted file crashed the parser"), "failed", "failure"),
    ("detection", TimeLimitExceeded("past its limit"), "skipped", "skipped"),
    ("purification", OutOfMemory("out of memory after one retry"), "skipped", "skipped"),
    ("detection", ValueError("nan"), "failed", "failure"),
])
def test_every_stage_fails_through_the_one_path(stage, error, state, counts_as):
    log = _log()
    crashed = log.fail(stage, time.perf_counter(), error)
    assert log.steps[stage].state == state and log.steps[stage].required and stage in log.timings
    found = {"unsafe": bool(log.unsafe), "skipped": bool(log.skipped), "failure": bool(log.failures)}
    assert found == {kind: kind == counts_as for kind in found}
    assert crashed is (counts_as == "failure")
    assert log.decision().exit_code != 0
