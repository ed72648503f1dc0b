"""``cbpt-guard check`` end to end on the tiny zoo: every exit code, every mode, failing closed, determinism.

The tiny zoo's models are weak (a few hundred training steps), so detection's
statistics on them are not those of the shipped calibration. These tests use a
calibration fitted on the tiny clean twin with a loose threshold, which the
tiny BadNets model's real evidence crosses and the clean twin's does not; how
well detection separates real zoo models is the detection benchmark's job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner

from cbpt_guard.cli.main import cli
from cbpt_guard.pipeline import check, detect_budget

TODAY = dt.date(2026, 1, 15)
# z of about 0.25 above the single clean reference. Measured on this tiny zoo with the budget below and seed
# 0: the BadNets model scores 1.00, the clean twin 0.001 (its own reference, whose targets are all attractors).
# Over seeds 1-3 BadNets scores 0.985-1.0 and the clean twin 0.055-0.88, still overlapping the loose bar
# at times: a model this small is no test of detection's power, only of the gate.
LOOSE_THRESHOLD = 0.6

POLICY = """\
version: 1
mode: {mode}
detection:
  budget: {{steps: 300, batch_size: 24, time_limit_s: 600, targeted_classes: 1}}
  families: [patch]
  calibration: tiny-cal.json
evidence: {{on_backdoor: {on_backdoor}, on_required_skipped: inconclusive, on_stage_failure: block}}
purification: {{n_ctx: 4, steps: 80, lr: 0.002, shots: 4}}
verification: {{max_asr: 0.25, max_ca_drop: 0.25}}
export: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def policies(tiny_zoo, tmp_path_factory):
    """Policy files by name (purify, block, warn, dry-run) sharing one tiny calibration."""
    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.policy import load_policy

    root, _ = tiny_zoo
    folder = tmp_path_factory.mktemp("policies")
    paths = {}
    for name, mode, action in (("purify", "enforce", "purify"), ("block", "enforce", "block"),
                               ("warn", "warn", "purify"), ("dry-run", "dry-run", "block")):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(POLICY.format(mode=mode, on_backdoor=action))
    budget = detect_budget(load_policy(paths["purify"]))
    calibration = calibrate_models([root / "clean-s1"], budget=budget)
    (folder / "tiny-cal.json").write_text(dataclasses.replace(calibration, threshold=LOOSE_THRESHOLD).to_json())
    return paths


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    """A labelled ImageFolder of held-out zoo images: 12 per class, 4 to tune on and 8 to verify."""
    from cbpt_guard_zoo.imagefolder import write_image_folder

    folder = tmp_path_factory.mktemp("fewshot") / "data"
    write_image_folder(folder, per_class=12)
    return folder


def _cli(*args: str):
    return CliRunner().invoke(cli, [*map(str, args)])


def test_clean_model_passes_with_exit_0_and_writes_every_report(tiny_zoo, policies, tmp_path):
    root, _ = tiny_zoo
    result = _cli("check", root / "clean-s1", "--policy", policies["purify"], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS:")
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert verdict["decision"]["action"] == "pass" and verdict["detection"]["outcome"].startswith("no evidence")
    for name in ("report.html", "summary.md", "results.sarif"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert {s["name"]: s["state"] for s in verdict["steps"]}["purification"] == "not-needed"


def test_steps_the_decision_rests_on_are_marked_required(tiny_zoo, policies, tmp_path):
    root, _ = tiny_zoo
    verdict = check(root / "clean-s1", policy=policies["purify"], out_dir=tmp_path, today=TODAY)
    required = {s.name: (s.state, s.required) for s in verdict.steps}
    assert required["intake"] == required["detection"] == required["reports"] == ("done", True)
    assert required["purification"] == ("not-needed", False)
    assert required["export"] == ("not-needed", False)  # this policy does not export


def test_backdoored_model_is_purified_verified_and_its_prompts_reload(tiny_zoo, policies, fewshot, tmp_path):
    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.intake import load_checkpoint
    from cbpt_guard.purify.artifacts import load_prompts, purified_classifier
    from cbpt_guard.purify.prompt_learner import ClassPromptLearner
    from cbpt_guard.purify.text_encoder import EmbeddingTextEncoder
    from cbpt_guard_zoo.build import ZooRecipe, load_test_split, real_trigger
    from cbpt_guard_zoo.train import attack_success_rate

    root, truths = tiny_zoo
    before = (root / "badnets-s0" / "open_clip_model.safetensors").read_bytes()
    verdict = check(root / "badnets-s0", policy=policies["purify"], out_dir=tmp_path, data=fewshot, today=TODAY)
    purification = verdict.purification
    assert verdict.detection.outcome == "backdoor evidence found"
    assert purification is not None and purification.tier == "few-shot"
    assert sorted(purification.families) == ["patch", "targeted"]  # most anomalous first
    # the tiny BadNets model is backdoored (its ground truth) and this policy's loose bars are met: purified, exit 0
    assert purification.bars_met, purification
    assert (verdict.decision.action, verdict.decision.exit_code) == ("purified", 0)
    assert purification.after.dummy_asr["patch"] < purification.before.dummy_asr["patch"]
    assert (root / "badnets-s0" / "open_clip_model.safetensors").read_bytes() == before

    # the saved context reproduces the saved class embeddings through the model's own text tower
    prompts = load_prompts(tmp_path / purification.prompts_path)
    assert prompts.sha256 == purification.prompts_sha256
    assert prompts.manifest["source_checkpoint_sha256"] == verdict.checkpoint.digest
    model = load_checkpoint(root / "badnets-s0").model.eval()
    learner = ClassPromptLearner(model, prompts.classes, n_ctx=prompts.ctx.shape[1])
    learner.load_state_dict({"ctx": prompts.ctx})
    with torch.no_grad():
        rebuilt = learner.class_embeddings(EmbeddingTextEncoder(model))  # (C, d)
    torch.testing.assert_close(rebuilt, prompts.class_embeddings, atol=1e-5, rtol=0)

    # the real trigger, never seen by purification (it trained on detection's dummy trigger), is neutralised
    truth = truths["badnets-s0"]
    data = load_test_split(ZooRecipe.from_dict(truth["recipe"]))
    trigger = real_trigger(truth["attack"], truth["trigger_params"])
    target = prompts.classes.index(truth["target"])
    original = build_classifier(model, prompts.classes, verdict.checkpoint.templates)
    asr_before = attack_success_rate(original, data.test_images, data.test_labels, trigger, target)
    asr_after = attack_success_rate(purified_classifier(model, prompts), data.test_images, data.test_labels,
                                    trigger, target)
    assert asr_before > 0.8 and asr_after < 0.2 * asr_before, (asr_before, asr_after)


def test_block_policy_blocks_a_backdoored_model_with_exit_1(tiny_zoo, policies):
    root, _ = tiny_zoo
    result = _cli("check", root / "badnets-s0", "--policy", policies["block"], "--json")
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.stdout)
    assert verdict["decision"]["action"] == "block"
    assert "the policy blocks a model with backdoor evidence" in verdict["decision"]["reasons"]


@pytest.mark.parametrize("mode", ["warn", "dry-run"])
def test_warn_and_dry_run_exit_0_and_record_what_enforce_would_do(tiny_zoo, policies, mode):
    root, _ = tiny_zoo
    result = _cli("check", root / "badnets-s0", "--policy", policies[mode], "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)["decision"]
    enforced = "purify" if mode == "warn" else "block"
    assert (decision["action"], decision["enforced"], decision["mode"]) == ("pass", enforced, mode)
    assert any(reason.startswith(f"{mode} mode: enforce would") for reason in decision["reasons"])


def test_same_inputs_policy_and_seed_give_a_byte_identical_verdict(tiny_zoo, policies, tmp_path):
    root, _ = tiny_zoo
    runs = [check(root / "badnets-s0", policy=policies["purify"], out_dir=tmp_path / f"run{i}", today=TODAY)
            for i in range(2)]
    first, second = (run.to_json(include_timings=False) for run in runs)
    assert first == second
    assert runs[0].purification is not None  # the comparison covered detection and purification
    other_seed = check(root / "badnets-s0", policy=policies["purify"], seed=1, today=TODAY)
    assert other_seed.to_json(include_timings=False) != first


def test_a_pickle_that_runs_code_is_blocked_with_a_verdict_and_nothing_runs(tiny_zoo, policies, tmp_path):
    root, _ = tiny_zoo
    model = tmp_path / "model"
    shutil.copytree(root / "clean-s1", model)
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {sentinel}",)

    (model / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    result = _cli("check", model, "--policy", policies["purify"], "--json")
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.stdout)
    assert any("system" in finding for finding in verdict["checkpoint"]["unsafe_findings"])
    assert any(reason.startswith("unsafe serialisation") for reason in verdict["decision"]["reasons"])
    assert not sentinel.exists()


def test_a_directory_with_nothing_scannable_is_inconclusive_exit_3(policies, tmp_path):
    (tmp_path / "README.txt").write_text("no weights here")
    result = _cli("check", tmp_path, "--policy", policies["purify"], "--json")
    assert result.exit_code == 3, result.output
    verdict = json.loads(result.stdout)
    assert verdict["decision"]["action"] == "inconclusive" and verdict["detection"] is None


@pytest.mark.parametrize("mode", ["purify", "warn"])
def test_a_crashing_stage_fails_closed_in_every_mode(tiny_zoo, policies, monkeypatch, mode):
    import cbpt_guard.detect.run as run

    def crash(*args, **kwargs):
        raise RuntimeError("inversion blew up")

    monkeypatch.setattr(run, "gather_evidence", crash)
    root, _ = tiny_zoo
    verdict = check(root / "clean-s1", policy=policies[mode], today=TODAY)
    assert verdict.decision.action == "block" and verdict.decision.exit_code == 1  # the policy blocks failures
    assert verdict.decision.fail_closed
    assert {s.name: s.state for s in verdict.steps}["detection"] == "failed"
    assert any("inversion blew up" in reason for reason in verdict.decision.reasons)


def test_a_failed_export_is_a_failed_step_not_a_pass(tiny_zoo, policies, monkeypatch, tmp_path):
    import cbpt_guard.export as export
    from cbpt_guard.errors import ExportError

    def refuse(*args, **kwargs):
        raise ExportError("cannot export operator 'aten::frobnicate'", operator="aten::frobnicate")

    monkeypatch.setattr(export, "export_classifier", refuse)
    policy = tmp_path / "export.yaml"
    policy.write_text(policies["purify"].read_text().replace("export: {enabled: false}", "export: {enabled: true}"))
    shutil.copy(policies["purify"].parent / "tiny-cal.json", tmp_path / "tiny-cal.json")
    root, _ = tiny_zoo
    verdict = check(root / "clean-s1", policy=policy, out_dir=tmp_path / "out", today=TODAY)
    assert verdict.export is not None and not verdict.export.passed and "frobnicate" in verdict.export.error
    assert verdict.decision.action == "block" and verdict.decision.fail_closed


def test_an_internal_error_outside_the_stages_exits_2(monkeypatch, tiny_zoo, policies):
    import cbpt_guard.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(pipeline, "check", broken)
    root, _ = tiny_zoo
    result = _cli("check", root / "clean-s1", "--policy", policies["purify"])
    assert result.exit_code == 2
    assert "internal error: RuntimeError: unforeseen" in result.output


def test_an_invalid_policy_exits_4_naming_file_line_and_key(tiny_zoo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmode: enforce\ndetection:\n  calibration: builtin\n  stepz: 3\n")
    root, _ = tiny_zoo
    result = _cli("check", root / "clean-s1", "--policy", bad)
    assert result.exit_code == 4
    assert f"{bad}:5: detection.stepz" in result.output


def test_missing_class_names_and_missing_data_folder_are_usage_errors(tiny_zoo, policies, tmp_path):
    root, _ = tiny_zoo
    model = tmp_path / "model"
    shutil.copytree(root / "clean-s1", model)
    (model / "cbpt_manifest.json").unlink()
    assert _cli("check", model, "--policy", policies["purify"]).exit_code == 4
    missing = _cli("check", root / "clean-s1", "--policy", policies["purify"], "--data", tmp_path / "nope")
    assert missing.exit_code == 4


def _verified(warp_after: float, *, scope: str = "all", warp_z: float | None = -2.75, max_asr: float = 0.05,
              suspected: str | None = "cross"):
    """Verification of two dummies: patch toward the suspected 'cross', warp toward the attractor 'square'."""
    from types import SimpleNamespace

    from cbpt_guard.policy.schema import DummyScope
    from cbpt_guard.purify.verify import ClassifierMetrics, verify

    classes = ("circle", "square", "cross")
    dummies = [SimpleNamespace(family="patch", target_index=2), SimpleNamespace(family="warp", target_index=1)]
    before = ClassifierMetrics(clean_accuracy=None, agreement=1.0, dummy_asr={"patch": 0.49, "warp": 0.064})
    after = ClassifierMetrics(clean_accuracy=None, agreement=1.0, dummy_asr={"patch": 0.018, "warp": warp_after})
    detection = SimpleNamespace(suspected_target=suspected, threshold=0.99865,
                                families=[SimpleNamespace(family="patch", z=4.7),
                                          SimpleNamespace(family="warp", z=warp_z)])
    bars = SimpleNamespace(max_asr=max_asr, dummies=DummyScope(scope))
    return verify(dummies, before, after, 0.0, False, classes, detection, bars)


def test_a_missed_asr_bar_names_the_dummy_that_set_it_and_whether_it_is_the_backdoors():
    from types import SimpleNamespace

    from cbpt_guard.decide import verification_misses, worst_wording

    bars = SimpleNamespace(max_asr=0.02, max_ca_drop=0.02)
    verification = _verified(0.056, max_asr=0.02)
    assert verification_misses(verification, bars) == (
        "dummy-trigger ASR 5.60% > 2.00% (the warp trigger toward 'square', not the suspected 'cross')",)
    assert worst_wording(verification.worst, "square") == "the warp trigger toward 'square'"
    assert worst_wording(_verified(0.001, max_asr=0.02).worst, "cross") == "the patch trigger toward 'cross'"
    assert _verified(0.056, suspected=None, max_asr=0.02).worst.family == "warp"


@pytest.mark.parametrize(("scope", "warp_z", "warp_after", "held", "risen"), [
    ("all", -2.75, 0.062, {"patch", "warp"}, ()),
    ("evidence", -2.75, 0.062, {"patch"}, ()),  # under its own rate before (6.4%): not the backdoor's, not strengthened
    ("evidence", -2.75, 0.072, {"patch"}, ()),  # risen 0.8 points: within the noise of measuring it again
    ("evidence", -2.75, 0.080, {"patch"}, ("the warp trigger toward 'square' 6.40% -> 8.00%",)),
    ("evidence", 3.5, 0.062, {"patch", "warp"}, ()),  # evidence of its own (a second backdoor): held to max_asr
    ("evidence", None, 0.062, {"patch", "warp"}, ()),  # no z to judge it by: held
])
def test_only_dummies_that_are_no_evidence_are_held_to_their_own_rate_under_scope_evidence(scope, warp_z, warp_after,
                                                                                          held, risen):
    from cbpt_guard.decide import risen_wording

    verification = _verified(warp_after, scope=scope, warp_z=warp_z)
    assert {dummy.family for dummy in verification.held} == held
    assert verification.dummies[1].bar == pytest.approx(0.074 if held == {"patch"} else 0.05)
    assert tuple(risen_wording(dummy) for dummy in verification.risen) == risen
