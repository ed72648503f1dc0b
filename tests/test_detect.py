"""Detection on a really backdoored tiny model and its clean twin; determinism; bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from cbpt_guard.classifier import build_classifier
from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.api import detect_checkpoint
from cbpt_guard.detect.budget import scoring_settings
from cbpt_guard.detect.inversion import InversionBudget, info_nce, invert, mean_pairwise_cosine
from cbpt_guard.detect.run import DetectBudget, _effective_size, detect, gather_evidence
from cbpt_guard.errors import ClassListError, NothingScannableError
from cbpt_guard.intake import load_checkpoint
from cbpt_guard.probes import procedural_probes
from cbpt_guard_zoo.build import ZooRecipe, load_test_split

FAST = DetectBudget(probes=48, inversion=InversionBudget(steps=120, batch_size=24, check_size=32),
                    anomaly_steps=10, anomaly_probes=6, targeted_classes=1)


def _classifier(directory):
    loaded = load_checkpoint(directory)
    return build_classifier(loaded.model, loaded.report.classes, loaded.report.templates), loaded.report


def test_info_nce_prefers_collapsed_stamped_features():
    torch.manual_seed(0)
    clean = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    collapsed = torch.nn.functional.normalize(torch.ones(8, 16) + 0.01 * torch.randn(8, 16), dim=-1)
    scattered = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert info_nce(collapsed, clean, 0.07) < info_nce(scattered, clean, 0.07)
    assert mean_pairwise_cosine(collapsed) > 0.99


def test_patch_inversion_recovers_a_working_trigger_on_the_backdoored_model(tiny_zoo):
    root, truths = tiny_zoo
    target = truths["badnets-s0"]["target"]
    data = load_test_split(ZooRecipe(config="vit-tiny", test_size=600))
    results = {}
    for name in ("badnets-s0", "clean-s1"):
        classifier, report = _classifier(root / name)
        probes = procedural_probes(48, 32, 0).images
        keep = data.test_labels != report.classes.index(target)
        rates = []
        # Three restarts, best kept: on a model this small one short run lands anywhere from a third to
        # three quarters of the real trigger's effect, the clean twin's best stays near zero.
        for seed in (1, 2, 3):
            inverted = invert(classifier, probes, "patch", FAST.inversion, seed=seed)
            with torch.no_grad():
                hits = classifier.predict(inverted.trigger(data.test_images[keep])) == report.classes.index(target)
            rates.append(float(hits.float().mean()))
        results[name] = max(rates)
    assert results["badnets-s0"] >= 0.5, results
    assert results["badnets-s0"] - results["clean-s1"] >= 0.3, results


def test_text_term_pulls_stamped_features_toward_its_class(tiny_zoo):
    """On the clean twin the aimed patch moves the probes' features toward the class, the label-free one does not.

    (It need not flip them: without a backdoor to that class, the size penalty
    stops the search long before; that is what makes the aimed size evidence.)
    """
    root, _ = tiny_zoo
    classifier, report = _classifier(root / "clean-s1")
    probes = procedural_probes(48, 32, 0).images
    aim = classifier.text[report.classes.index("letter L")]
    with torch.no_grad():
        before = float((classifier.features(probes) @ aim).mean())
    gains = {}
    for aimed in (False, True):
        result = invert(classifier, probes, "patch", FAST.inversion, seed=1, toward=aim if aimed else None)
        with torch.no_grad():
            gains[aimed] = float((classifier.features(result.trigger(probes)) @ aim).mean()) - before
    assert gains[True] > 0.05 and gains[True] > gains[False] + 0.05, gains


def test_patch_aimed_at_the_backdoor_target_works_only_on_the_backdoored_model(tiny_zoo):
    """Aimed at the BadNets target, the patch flips most probes there at a smaller size; on the clean twin none."""
    root, truths = tiny_zoo
    target = truths["badnets-s0"]["target"]
    probes = procedural_probes(48, 32, 0).images
    budget = replace(FAST.inversion, steps=240)  # long enough for the size penalty to shrink both to collapse
    sizes, hits = {}, {}
    for name in ("badnets-s0", "clean-s1"):
        classifier, report = _classifier(root / name)
        aim = report.classes.index(target)
        result = invert(classifier, probes, "patch", budget, seed=1, toward=classifier.text[aim])
        sizes[name] = _effective_size(result)  # as detection counts a trigger that never collapsed
        with torch.no_grad():
            hits[name] = float((classifier.predict(result.trigger(probes)) == aim).float().mean())
    assert hits["badnets-s0"] >= 0.5 and hits["clean-s1"] <= 0.1, hits
    assert sizes["badnets-s0"] < 0.85 * sizes["clean-s1"], sizes


def test_targeted_stage_adds_evidence_and_is_never_silently_skipped(tiny_zoo):
    root, truths = tiny_zoo
    loaded = load_checkpoint(root / "badnets-s0")
    evidence = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=FAST, seed=0)
    targeted = next(f for f in evidence.families if f.family == "targeted")
    assert evidence.triggers["targeted"].family == "patch" and targeted.steps_run <= FAST.inversion.steps // 2
    assert {"targeted.log_size", "targeted.concentration", "targeted.inverted_asr"} <= set(evidence.features)
    off = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates,
                          budget=replace(FAST, targeted_classes=0), seed=0)
    assert "targeted" not in {f.family for f in off.families} and "targeted" not in off.triggers
    assert ("detection.targeted", "targeted inversion disabled by the budget") in off.skipped


def test_identical_seeds_give_identical_verdicts(tiny_zoo):
    root, _ = tiny_zoo
    loaded = load_checkpoint(root / "badnets-s0")
    reference = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=FAST, seed=3)
    calibration = calib.fit({"self": reference.features}, budget=scoring_settings(FAST))
    runs = [detect(loaded.model, loaded.report.classes, loaded.report.templates, calibration=calibration,
                   budget=FAST, seed=3).model_dump(mode="json") for _ in range(2)]
    for run in runs:
        run.pop("seconds")
        for family in run["families"]:
            family.pop("seconds")
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)


def test_zero_classes_is_a_clear_error(tiny_zoo):
    root, _ = tiny_zoo
    loaded = load_checkpoint(root / "clean-s1")
    with pytest.raises(ClassListError, match="class names"):
        gather_evidence(loaded.model, (), loaded.report.templates, budget=FAST)


def test_probe_folder_with_only_corrupt_files_is_a_clear_error(tiny_zoo, tmp_path):
    root, _ = tiny_zoo
    (tmp_path / "a.png").write_bytes(b"not an image")
    calibration_file = tmp_path / "cal.json"
    calibration_file.write_text(calib.Calibration({"patch.log_size": (0.0, 1.0)}, 0.99, (),
                                                  budget=scoring_settings(FAST)).to_json())
    with pytest.raises(NothingScannableError, match="no readable images"):
        detect_checkpoint(root / "clean-s1", probes_dir=tmp_path, calibration_path=calibration_file, budget=FAST)


def test_unlabelled_folder_tier_is_used_and_corrupt_files_reported(tiny_zoo, tmp_path):
    root, _ = tiny_zoo
    images = procedural_probes(12, 32, 5).images
    for index, image in enumerate(images):
        array = (image.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(tmp_path / f"{index}.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    calibration_file = tmp_path / "cal.json"
    budget = DetectBudget(families=("patch",), probes=16, inversion=InversionBudget(steps=10, batch_size=8,
                                                                                      check_size=8), anomaly_steps=0)
    calibration_file.write_text(calib.Calibration({"patch.log_size": (0.0, 1.0)}, 0.99, (),
                                                  budget=scoring_settings(budget)).to_json())
    report = detect_checkpoint(root / "clean-s1", probes_dir=tmp_path, calibration_path=calibration_file,
                               budget=budget)
    assert report.probe_tier == "unlabelled" and report.probe_count == 12
    assert [what.rsplit("/", 1)[-1] for what, _ in report.probe_files_skipped] == ["corrupt.jpg"]
    assert ("detection.anomaly", "per-class anomaly disabled by the budget") in report.skipped
    assert ("detection.targeted", "targeted inversion needs the per-class anomaly's ranking") in report.skipped
    # the clean twin shows no evidence, and a step was skipped: inconclusive, never clean
    assert report.outcome == "inconclusive", report


def test_calibrate_then_detect_through_the_cli(tiny_zoo, tmp_path):
    from click.testing import CliRunner

    from cbpt_guard.cli.main import cli

    root, truth = tiny_zoo
    # the budget test_check.py's gate runs at: cheaper ones (20-150 steps, or 48 probes) leave the tiny BadNets
    # model's evidence under the calibration's bar
    flags = ["--steps", "300", "--batch-size", "24", "--families", "patch", "--targeted", "1"]
    calibration = tmp_path / "cal.json"
    runner = CliRunner()
    made = runner.invoke(cli, ["calibrate", str(root / "clean-s1"), "--out", str(calibration), *flags])
    assert made.exit_code == 0, made.output
    assert json.loads(calibration.read_text())["references"] == [str(root / "clean-s1")]

    result = runner.invoke(cli, ["detect", str(root / "badnets-s0"), "--calibration", str(calibration), "--json",
                                 *flags])
    report = json.loads(result.stdout)
    assert truth["badnets-s0"]["kind"] == "backdoored"  # the ground truth: so evidence, exit 1
    assert (report["outcome"], result.exit_code) == ("backdoor evidence found", 1), result.output
    assert report["budget"]["inversion"]["steps"] == 300 and report["budget"]["inversion"]["batch_size"] == 24
    assert {f["family"] for f in report["families"]} == {"patch", "targeted"}
    assert all(f["images"]["stamped"].startswith("data:image/png;base64,") for f in report["families"])


def test_unknown_family_flag_is_a_usage_error(tiny_zoo):
    from click.testing import CliRunner

    from cbpt_guard.cli.main import cli

    root, _ = tiny_zoo
    result = CliRunner().invoke(cli, ["detect", str(root / "clean-s1"), "--families", "patch,nope"])
    assert result.exit_code == 4 and "unknown trigger families" in result.output
