"""One device per run: every stage makes its tensors where the model is, and the Verdict says where that was.

This machine may have no GPU, so "follows the model's device" is tested by
making torch's *default* device ``meta`` (shapes, no data) while the model
stays on the CPU: a stage that creates a tensor without naming the model's
device gets a meta tensor, and the run breaks on it at once (a meta tensor has
no values to read). A stage that follows the model runs as it always did, to
the same numbers. On a machine with CUDA the ``gpu`` tests run the real thing.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.detect.run import DetectBudget, InversionBudget, gather_evidence
from cbpt_guard.errors import ExitCode, UsageError
from cbpt_guard.pipeline import check, detect_budget

torch.set_num_threads(1)
CLASSES = ("circle", "square", "triangle")
TEMPLATES = ("a photo of a {}.",)
SMALL = DetectBudget(probes=16, inversion=InversionBudget(steps=6, batch_size=8, check_every=3, check_size=8),
                     anomaly_steps=2, anomaly_probes=4, targeted_classes=1)
POLICY = """\
version: 1
mode: enforce
detection:
  budget: {steps: 6, batch_size: 8, time_limit_s: 600, targeted_classes: 1}
  families: [patch, additive, warp]
  calibration: tiny-cal.json
evidence: {on_backdoor: block, on_required_skipped: inconclusive, on_stage_failure: block}
export: {enabled: true}
"""
UNCALIBRATED = """\
version: 1
mode: enforce
detection:
  budget: {steps: 7}
  calibration: builtin
run: {device: DEVICE}
"""
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_tiny("vit", seed=3)
    return model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny model folder and a policy whose calibration was fitted on it at the policy's budget."""
    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.policy import load_policy

    model, config = build_tiny("vit", seed=5)
    directory = save_open_clip_dir(model, config, tmp_path_factory.mktemp("clean"), "safetensors",
                                   classes=list(CLASSES))
    folder = tmp_path_factory.mktemp("policy")
    policy = folder / "tiny.yaml"
    policy.write_text(POLICY)
    calibration = calibrate_models([directory], budget=detect_budget(load_policy(policy)))
    (folder / "tiny-cal.json").write_text(calibration.to_json())
    return directory, policy


def _same_evidence(got, expected) -> None:
    """The same findings; floats to 1e-5 (torch's meta-device mode may pick another summation order)."""
    assert got.features == pytest.approx(expected.features, rel=1e-5, abs=1e-6)
    assert got.anomaly.suspect == expected.anomaly.suspect
    assert got.anomaly.costs == pytest.approx(expected.anomaly.costs, rel=1e-5)
    for mine, theirs in zip(got.families, expected.families, strict=True):
        exact = ("family", "collapsed", "target", "histogram", "steps_run")
        assert {k: getattr(mine, k) for k in exact} == {k: getattr(theirs, k) for k in exact}
        assert (mine.size, mine.collapse_cos) == pytest.approx((theirs.size, theirs.collapse_cos), rel=1e-5)


# -- every stage follows the model's device ---------------------------------------------------------------


def test_every_detection_stage_makes_its_tensors_on_the_models_device(tiny):
    expected = gather_evidence(tiny, CLASSES, TEMPLATES, budget=SMALL, seed=1)
    with torch.device("meta"):  # a tensor made without naming the model's device would land here, and break
        followed = gather_evidence(tiny, CLASSES, TEMPLATES, budget=SMALL, seed=1)
    _same_evidence(followed, expected)
    assert all(value.device.type == "cpu" for trigger in followed.triggers.values()
               for value in trigger.state().values())


def test_purification_and_its_verification_make_their_tensors_on_the_models_device(tiny):
    from cbpt_guard.detect.budget import scoring_settings
    from cbpt_guard.detect.calibration import fit
    from cbpt_guard.purify.api import PurifySettings, purify_and_verify

    evidence = gather_evidence(tiny, CLASSES, TEMPLATES, budget=SMALL, seed=1)
    calibration = fit({"a": evidence.features, "b": evidence.features}, reference_targets={},
                      budget=scoring_settings(SMALL))
    settings = PurifySettings(steps=3, n_ctx=2)
    kwargs = dict(settings=settings, detect_budget=SMALL, seed=2)
    expected = purify_and_verify(tiny, CLASSES, TEMPLATES, evidence, calibration, **kwargs)
    with torch.device("meta"):
        followed = purify_and_verify(tiny, CLASSES, TEMPLATES, evidence, calibration, **kwargs)
    assert followed.tuning.curves["total"] == pytest.approx(expected.tuning.curves["total"], rel=1e-5)
    assert torch.allclose(followed.tuning.class_embeddings, expected.tuning.class_embeddings, atol=1e-5)
    assert (followed.before, followed.after) == (expected.before, expected.after)
    assert followed.recheck.score == pytest.approx(expected.recheck.score, rel=1e-4, abs=1e-5)


def test_a_whole_check_with_export_makes_its_tensors_on_the_models_device(tiny_dir, tmp_path):
    directory, policy = tiny_dir
    with torch.device("meta"):
        verdict = check(directory, policy=policy, out_dir=tmp_path / "out", device="cpu")
    assert [(s.name, s.state) for s in verdict.steps if s.state == "failed"] == []
    assert verdict.export is not None and verdict.export.passed
    assert verdict.device == "cpu" and verdict.gpu is None


def test_the_model_is_moved_to_the_resolved_device_before_detection(tiny_dir, monkeypatch):
    """The device a run resolves is where detection finds the model (spied here; a meta model cannot be scored)."""
    import cbpt_guard.detect.run as run
    import cbpt_guard.pipeline as pipeline
    from cbpt_guard.device import RunDevice, device_of

    seen = []

    def spy(model, *args, **kwargs):
        seen.append(device_of(model).type)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "resolve", lambda choice: RunDevice(choice="cpu", name="meta"))
    monkeypatch.setattr(run, "gather_evidence", spy)
    directory, policy = tiny_dir
    verdict = check(directory, policy=policy)
    assert seen == ["meta"] and verdict.device == "meta"


# -- the choice: flag, policy, machine ----------------------------------------------------------------------


def test_auto_takes_cuda_only_when_a_gpu_is_there():
    from cbpt_guard.device import resolve

    device = resolve("auto")
    assert device.name == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve("cpu").name == "cpu" and resolve(None).choice == "auto"


@NO_CUDA
def test_cuda_without_a_gpu_is_a_usage_error():
    from cbpt_guard.device import resolve

    with pytest.raises(UsageError, match="device cuda was asked for, but no CUDA device is available"):
        resolve("cuda")


@NO_CUDA
@pytest.mark.parametrize("command", [["check"], ["detect"], ["purify"], ["export", "--out", "x.onnx"],
                                     ["calibrate", "--out", "cal.json"]])
def test_every_computing_command_refuses_cuda_without_a_gpu_before_loading(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [command[0], "no-such-model", *command[1:], "--device", "cuda"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "device cuda was asked for, but no CUDA device is available" in result.stderr


@NO_CUDA
def test_the_policys_run_device_is_read_and_the_flag_overrides_it(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    policy = tmp_path / "cuda.yaml"
    policy.write_text(UNCALIBRATED.replace("DEVICE", "cuda"))
    runner = CliRunner()
    refused = runner.invoke(cli, ["check", str(directory), "--policy", str(policy)])
    assert refused.exit_code == ExitCode.USAGE and "device cuda was asked for" in refused.stderr
    overridden = runner.invoke(cli, ["check", str(directory), "--policy", str(policy), "--device", "cpu", "--json"])
    assert overridden.exit_code == ExitCode.INCONCLUSIVE, overridden.output  # uncalibrated budget: no inversion
    verdict = json.loads(overridden.stdout)
    assert (verdict["device"], verdict["gpu"], verdict["policy"]["settings"]["run"]) == ("cpu", None,
                                                                                      {"device": "cuda"})


def test_a_policy_refuses_an_unknown_device(tmp_path):
    policy = tmp_path / "tpu.yaml"
    policy.write_text(UNCALIBRATED.replace("DEVICE", "tpu"))
    result = CliRunner().invoke(cli, ["policy", "validate", str(policy)])
    assert result.exit_code == ExitCode.USAGE and "run.device" in result.stderr


def test_the_github_commands_hand_their_device_to_every_check(tmp_path, monkeypatch):
    from cbpt_guard.github import gate

    asked = []

    def fake_check(model, **kwargs):
        asked.append(kwargs.get("device"))
        raise UsageError("stop")

    monkeypatch.setattr(gate, "default_check", lambda: fake_check)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "open_clip_model.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(cli, ["github", "changed", "model/open_clip_model.safetensors", "--device", "cpu"])
    assert asked == ["cpu"]


# -- on a GPU ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_on_cuda_the_whole_check_runs_there_and_the_verdict_names_the_gpu(tiny_dir, tmp_path):
    directory, policy = tiny_dir
    verdict = check(directory, policy=policy, out_dir=tmp_path / "out", device="cuda")
    assert verdict.device.startswith("cuda") and verdict.gpu is not None
    assert verdict.gpu.name == torch.cuda.get_device_name()
    assert verdict.export is not None and verdict.export.passed  # parity in float32 without TF32
    assert [s.name for s in verdict.steps if s.state == "failed"] == []


@pytest.mark.gpu
def test_on_cuda_detection_keeps_every_tensor_on_the_gpu(tiny):
    model = build_tiny("vit", seed=3)[0].cuda()
    evidence = gather_evidence(model, CLASSES, TEMPLATES, budget=replace(SMALL, probes=16), seed=1)
    assert all(value.is_cuda for trigger in evidence.triggers.values() for value in trigger.state().values())
