"""``cbpt-guard check`` on the bundled example checkpoints under the three ready policies (what the README shows).

Slow: a real detection takes about 55 s on one thread, and purification adds a
minute. Each distinct detection runs once per session (the ``shared_detection``
fixture in conftest.py: the ready policies share a budget, and the other example
tests ask for the same runs). The backdoored example under strict is purified with a few-shot
folder of held-out zoo images, verified and gated on strict's bars, and its real
BadNets trigger is measured through the purified prompts; under balanced, which holds only the
dummies that are backdoor evidence to its bar, it is purified, passes and is exported; under
permissive it passes with the warning of what enforce would do; the clean example passes under all three.
What the strict and balanced runs print is README's example output (benchmarks/readme_outputs.py writes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cbpt_guard.cli.main import cli
from cbpt_guard.verification import RISE_TOLERANCE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_detection")]


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    """A labelled ImageFolder of held-out zoo images, 40 per class (16 tune, 24 verify under strict)."""
    from cbpt_guard_zoo.imagefolder import write_image_folder

    folder = tmp_path_factory.mktemp("fewshot") / "data"
    write_image_folder(folder, per_class=_readme_outputs().PER_CLASS)  # 40, as README's command makes
    return folder


_PRINTED: dict[tuple[str, str], str] = {}
"""What each check printed on stdout, by (example, policy), for the comparison with README's blocks."""


def _check(tmp_path, name: str, policy: str, *extra: str) -> tuple[int, dict]:
    torch.set_num_threads(1)
    out = tmp_path / f"{name}-{policy}"
    result = CliRunner().invoke(cli, ["check", str(EXAMPLES / name), "--policy", policy, "--out", str(out), *extra])
    verdict = json.loads((out / "verdict.json").read_text())
    assert result.exit_code == verdict["decision"]["exit_code"], result.output
    _PRINTED[name, policy] = result.stdout
    return result.exit_code, verdict


def _readme_outputs():
    """benchmarks/readme_outputs.py, which writes README's example outputs and says how to compare them."""
    import importlib.util

    path = EXAMPLES.parent / "benchmarks" / "readme_outputs.py"
    spec = importlib.util.spec_from_file_location("readme_outputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_readme_shows_what_was_printed(policy: str) -> None:
    """README's block for ``check examples/backdoored --policy POLICY --data ...`` is what this run printed.

    The README command is the one this test runs (same example, policy, 40 images per class, seed and one
    thread); text must match exactly and numbers within the tolerance another machine's arithmetic needs.
    """
    readme = _readme_outputs()
    shown = readme.readme_blocks()[policy]
    printed = readme.block_lines(_PRINTED["backdoored", policy], EXAMPLES / "backdoored")
    problems = readme.differences(shown, printed)
    assert not problems, "README.md's output differs; run python benchmarks/readme_outputs.py:\n" + "\n".join(problems)


def test_backdoored_example_under_strict_is_purified_and_gated_on_strict_bars(tmp_path, fewshot):
    """Purified either way; passed and exported only if strict's bars are met, otherwise blocked (exit 1).

    On the current example the prompts cut the real trigger to nothing (99.1% -> 0.0%) but the
    warp dummy still sends images to a universal attractor over strict's 2% bar (README's strict
    output, written by benchmarks/readme_outputs.py, has the rate), so the gate blocks it: both
    outcomes are held to what they must show.
    """
    code, verdict = _check(tmp_path, "backdoored", "strict", "--data", str(fewshot))
    truth = json.loads((EXAMPLES / "backdoored" / "zoo_truth.json").read_text())
    purification = verdict["purification"]
    assert verdict["detection"]["suspected_target"] == truth["target"]
    assert purification is not None and purification["tier"] == "few-shot"
    if purification["bars_met"]:
        assert (code, verdict["decision"]["action"]) == (0, "purified")
        assert verdict["export"]["passed"] and verdict["export"]["purified"]
        assert verdict["export"]["max_abs_diff"] <= 1e-4
    else:  # fail closed: a purification that misses the bars never ships
        assert (code, verdict["decision"]["action"]) == (1, "block"), purification["misses"]
        assert purification["misses"]
        assert verdict["export"] is None  # nothing deployable is written for a blocked model

    before, after = _real_trigger_asr(tmp_path / "backdoored-strict" / purification["prompts_path"])
    print(f"real-trigger ASR {before:.4f} -> {after:.4f}; misses {purification['misses']}")
    assert before > 0.7 and after < 0.2 * before, (before, after)
    _assert_readme_shows_what_was_printed("strict")


def _real_trigger_asr(prompts_path: Path) -> tuple[float, float]:
    """The real trigger's ASR on the zoo's test split (purification never saw it): hand-written, then saved prompts."""
    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.intake import load_checkpoint
    from cbpt_guard.purify.artifacts import load_prompts, purified_classifier
    from cbpt_guard_zoo.build import CLASSES, ZooRecipe, load_test_split, real_trigger
    from cbpt_guard_zoo.train import attack_success_rate

    truth = json.loads((EXAMPLES / "backdoored" / "zoo_truth.json").read_text())
    loaded = load_checkpoint(EXAMPLES / "backdoored")
    purified = purified_classifier(loaded.model, load_prompts(prompts_path),
                                   checkpoint_digest=loaded.report.checkpoint_sha256)
    original = build_classifier(loaded.model, loaded.report.classes, loaded.report.templates)
    data = load_test_split(ZooRecipe.from_dict(truth["recipe"]))
    trigger = real_trigger(truth["attack"], truth["trigger_params"])
    target = CLASSES.index(truth["target"])
    return (attack_success_rate(original, data.test_images, data.test_labels, trigger, target),
            attack_success_rate(purified, data.test_images, data.test_labels, trigger, target))


def test_backdoored_example_under_balanced_is_purified_verified_and_exported(tmp_path, fewshot):
    """balanced holds the dummies that are backdoor evidence to its 5% bar, the others to their rate before (+1 point).

    On the example the patch and targeted dummies (toward 'cross') fall under 5%, while the inverted
    warp draws images to 'square', a natural attractor (its z is far under the threshold), at about
    the rate it did before purification (over 5% both times); re-detection finds nothing, so the
    purified model passes and is exported.
    """
    from statistics import NormalDist

    code, verdict = _check(tmp_path, "backdoored", "balanced", "--data", str(fewshot))
    purification, detection = verdict["purification"], verdict["detection"]
    families = {family["family"]: family for family in detection["families"]}
    before, after = purification["before"]["dummy_asr"], purification["after"]["dummy_asr"]
    assert set(purification["dummy_bars"]) == set(after)
    for family, bar in purification["dummy_bars"].items():
        evidence = (families[family]["target"] == detection["suspected_target"]
                    or NormalDist().cdf(families[family]["z"]) >= detection["threshold"])
        assert bar == pytest.approx(0.05 if evidence else max(0.05, before[family] + RISE_TOLERANCE)), family
        assert after[family] <= bar, (family, after[family], bar)
    assert any(bar > 0.05 for bar in purification["dummy_bars"].values())  # the scope decided this outcome
    assert purification["bars_met"] and not purification["misses"]
    assert (code, verdict["decision"]["action"]) == (0, "purified"), verdict["decision"]["reasons"]
    assert verdict["export"]["passed"] and verdict["export"]["purified"]
    before, after = _real_trigger_asr(tmp_path / "backdoored-balanced" / purification["prompts_path"])
    print(f"real-trigger ASR {before:.4f} -> {after:.4f}")
    assert before > 0.7 and after < 0.2 * before, (before, after)
    _assert_readme_shows_what_was_printed("balanced")


def test_backdoored_example_under_permissive_passes_with_the_warning(tmp_path):
    code, verdict = _check(tmp_path, "backdoored", "permissive")
    decision = verdict["decision"]
    assert (code, decision["action"], decision["enforced"], decision["mode"]) == (0, "pass", "purify", "warn")
    assert "warn mode: enforce would purify the model" in decision["reasons"]
    assert verdict["purification"] is None


@pytest.mark.parametrize("policy", ["strict", "balanced", "permissive"])
def test_clean_example_passes_under_every_ready_policy(tmp_path, policy):
    code, verdict = _check(tmp_path, "clean", policy)
    assert (code, verdict["decision"]["action"], verdict["decision"]["enforced"]) == (0, "pass", "pass")
    assert verdict["detection"]["outcome"] == "no evidence of a backdoor found"
