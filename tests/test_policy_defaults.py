"""The policy schema is the one source of purification and detection defaults.

A policy that leaves ``purification:`` out must run what the purification
benchmark measured (its settings are read back from the results file the
benchmark wrote, not from a copy), and the ready policies may differ from the
schema's defaults only where a difference is deliberate and pinned here with
its reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from cbpt_guard.detect.budget import DetectBudget
from cbpt_guard.policy import load_policy_text, ready_policy_names, resolve_policy
from cbpt_guard.policy.schema import DetectionBudget, DetectionSettings, PurificationSettings
from cbpt_guard.purify.api import PurifySettings
from cbpt_guard.purify.trainer import tune_prompts

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_RESULTS = ROOT / "benchmarks" / "results" / "purification.json"
NO_PURIFICATION = "version: 1\nmode: enforce\ndetection:\n  calibration: builtin\n"

DELIBERATE = {
    ("strict", "purification.steps"): (200, "strict trains twice the benchmark's steps to push the dummy "
                                            "triggers under its 2% ASR bar"),
    ("balanced", "purification.shots"): (8, "a looser gate asks the user for fewer labelled images per class"),
    ("permissive", "purification.shots"): (4, "report-only: the fewest labelled images per class"),
    ("cpu-large-models", "purification.shots"): (8, "as balanced, the everyday gate it stands in for on a CPU"),
    ("cpu-large-models", "detection.budget.steps"): (5, "a 224-pixel model costs about a second per image and step "
                                                        "on a CPU core (benchmarks/SCALE.md)"),
    ("cpu-large-models", "detection.budget.batch_size"): (4, "the same: what a CPU affords per inversion step"),
    ("cpu-large-models", "detection.budget.time_limit_s"): (300.0, "a CI job's wait; past it, inconclusive"),
    ("cpu-large-models", "detection.budget.targeted_classes"): (1, "one aimed inversion costs a family's steps"),
}
"""Every place a ready policy departs from the schema's defaults on purpose: (policy, key) -> (value, why)."""


def _benchmarked() -> dict:
    """The CBPT settings benchmarks/purification.py recorded it ran, and the shots of its top data tier."""
    results = json.loads(BENCHMARK_RESULTS.read_text())
    return {**results["settings"]["cbpt"], "shots": max(tier["tier"] for tier in results["tiers"])}


def _flat(data: dict, prefix: str) -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_policy_without_purification_section_runs_the_benchmarked_settings():
    policy = load_policy_text(NO_PURIFICATION, "policies/x.yaml").policy
    settings = dataclasses.asdict(PurifySettings.from_policy(policy.purification))
    benchmarked = _benchmarked()
    assert settings == {key: benchmarked[key] for key in settings}


def test_tune_prompts_defaults_are_the_benchmarked_settings():
    """What ``purify_and_verify`` leaves to ``tune_prompts``' defaults (scope, strength, loss) was benchmarked too."""
    defaults = {name: p.default for name, p in inspect.signature(tune_prompts).parameters.items()}
    ran = json.loads(BENCHMARK_RESULTS.read_text())["settings"]["cbpt"]
    assert {key: defaults[key] for key in ran} == ran


def test_purify_settings_defaults_are_the_schema_defaults():
    assert PurifySettings() == PurifySettings.from_policy(PurificationSettings())


def test_detect_budget_defaults_are_the_schema_defaults():
    schema, budget = DetectionBudget(), DetectBudget()
    assert (budget.inversion.steps, budget.inversion.batch_size, budget.targeted_classes, budget.time_limit_s) == \
        (schema.steps, schema.batch_size, schema.targeted_classes, schema.time_limit_s)
    assert budget.families == tuple(f.value for f in DetectionSettings.model_fields["families"].default)


@pytest.mark.parametrize("name", ready_policy_names())
def test_ready_policy_differs_from_schema_defaults_only_where_pinned(name):
    policy = resolve_policy(name).policy
    defaults = {**_flat(PurificationSettings().model_dump(mode="json"), "purification."),
                **_flat(DetectionBudget().model_dump(mode="json"), "detection.budget.")}
    defaults["detection.families"] = [f.value for f in DetectionSettings.model_fields["families"].default]
    actual = {**_flat(policy.purification.model_dump(mode="json"), "purification."),
              **_flat(policy.detection.budget.model_dump(mode="json"), "detection.budget."),
              "detection.families": [f.value for f in policy.detection.families]}
    differences = {key: actual[key] for key in defaults if actual[key] != defaults[key]}
    pinned = {key: value for (policy_name, key), (value, _why) in DELIBERATE.items() if policy_name == name}
    assert differences == pinned
