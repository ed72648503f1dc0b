"""Fuzzing of configs, manifests, safetensors headers and policies: only typed errors, never a crash.

A few hundred cases per target here; ``benchmarks/fuzz.py`` runs ten thousand
per target with the same strategies and records the outcomes in
``benchmarks/FUZZ.md``.
"""

from __future__ import annotations

import time

import fuzz_targets
import pytest
import torch
from hypothesis import HealthCheck, given, settings

torch.set_num_threads(1)
CASES = {"config": 200, "manifest": 300, "safetensors": 200, "policy": 200}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("target", fuzz_targets.TARGETS)
def test_fuzzed_untrusted_input_gives_only_typed_errors(target, scratch):
    run = fuzz_targets.runner(target, scratch)
    assert fuzz_targets.outcome_of(run, fuzz_targets.VALID_CASES[target]).kind == "accepted"  # warm-up
    slowest = []

    @settings(max_examples=CASES[target], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_targets.STRATEGIES[target])
    def one_case(case):
        started = time.process_time()
        outcome = fuzz_targets.outcome_of(run, case)  # raises on anything but a typed error
        slowest.append(time.process_time() - started)
        assert outcome.exit_code in (0, 1, 3, 4)

    one_case()
    assert max(slowest) < 10


def test_fuzz_cases_reach_acceptance_and_refusal(scratch):
    """The mutations are not all rejected at the first byte: valid bases survive unedited."""
    for layout in fuzz_targets.CONFIG_LAYOUTS:
        case = (layout, [], None, 0)
        assert fuzz_targets.outcome_of(fuzz_targets.runner("config", scratch), case).kind == "accepted"
    case = ("manifest", {"manifest_version": 1, "classes": ["a"]}, None, 0)
    assert fuzz_targets.outcome_of(fuzz_targets.run_manifest, case).kind == "accepted"
    assert fuzz_targets.outcome_of(fuzz_targets.run_policy, (0, [], None)).kind == "accepted"
    refused = fuzz_targets.outcome_of(fuzz_targets.run_policy, (0, [], "version: 0x12C\n"))
    assert refused.exit_code == 4
