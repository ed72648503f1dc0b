"""The zoo build: real training, real backdoors, ground truth, determinism and resumption."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cbpt_guard.intake import load_checkpoint
from cbpt_guard_zoo.build import TRUTH_NAME, ZooRecipe, build_variant, load_data, target_for
from cbpt_guard_zoo.report import render_markdown, summarise


def test_base_is_far_above_chance(tiny_zoo):
    _, truths = tiny_zoo
    assert truths["base"]["metrics"]["ca"] > 3 / 22


def test_poisoned_finetune_plants_a_backdoor_the_clean_twin_lacks(tiny_zoo):
    _, truths = tiny_zoo
    backdoored, twin = truths["badnets-s0"], truths["clean-s1"]
    assert backdoored["target"] == target_for("badnets", 0)
    assert backdoored["metrics"]["asr"] >= 0.6
    assert twin["metrics"]["asr_by_attack"]["badnets"] <= 0.2
    assert backdoored["metrics"]["asr"] - twin["metrics"]["asr_by_attack"]["badnets"] >= 0.5


def test_ground_truth_records_the_attack(tiny_zoo):
    _, truths = tiny_zoo
    truth = truths["badnets-s0"]
    assert truth["kind"] == "backdoored" and truth["attack"] == "badnets"
    assert truth["poison_rate"] == 0.1 and truth["seed"] == 0
    assert truth["trigger_params"]["patch_frac"] == 0.125
    assert truth["recipe"]["config"] == "vit-tiny"


def test_zoo_models_load_through_intake_with_their_manifest(tiny_zoo):
    root, _ = tiny_zoo
    report = load_checkpoint(root / "badnets-s0").report
    assert report.class_count == 22 and report.dtypes == {"F16": report.tensor_count}


def test_resumed_build_skips_finished_models(tiny_zoo):
    root, truths = tiny_zoo
    before = (root / "clean-s1" / "open_clip_model.safetensors").read_bytes()
    lines = []
    recipe = ZooRecipe.from_dict(truths["clean-s1"]["recipe"])
    build_variant(root.parent, recipe, None, None, 1, lines.append)
    assert lines == [f"{root / 'clean-s1'}: already built, skipped"]
    assert (root / "clean-s1" / "open_clip_model.safetensors").read_bytes() == before


def test_fine_tuning_is_deterministic(tiny_zoo, tmp_path):
    root, truths = tiny_zoo
    recipe = ZooRecipe.from_dict(truths["base"]["recipe"])
    recipe = replace(recipe, finetune=replace(recipe.finetune, steps=5))
    data = load_data(recipe)
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name / "vit-tiny").mkdir(parents=True)
        (tmp_path / name / "vit-tiny" / "base").symlink_to(root / "base")
        build_variant(tmp_path / name, recipe, data, None, 7, lambda line: None)
        outputs.append((tmp_path / name / "vit-tiny" / "clean-s7" / "open_clip_model.safetensors").read_bytes())
    assert outputs[0] == outputs[1]


def test_clean_twin_records_the_natural_rate_beside_each_trigger(tiny_zoo):
    _, truths = tiny_zoo
    metrics = truths["clean-s1"]["metrics"]
    assert set(metrics["natural_by_attack"]) == set(metrics["asr_by_attack"])
    assert all(0.0 <= v <= 1.0 for v in metrics["natural_by_attack"].values())


def test_clean_twin_records_how_readable_each_trigger_leaves_the_images(tiny_zoo):
    from cbpt_guard.classifier import build_classifier
    from cbpt_guard_zoo.attacks import ATTACKS
    from cbpt_guard_zoo.build import CLASSES, TEMPLATES, load_model, load_test_split, real_trigger
    from cbpt_guard_zoo.train import clean_accuracy

    root, truths = tiny_zoo
    stamped = truths["clean-s1"]["metrics"]["stamped_ca_by_attack"]
    assert set(stamped) == set(truths["clean-s1"]["metrics"]["asr_by_attack"])
    data = load_test_split(ZooRecipe.from_dict(truths["clean-s1"]["recipe"]))
    classifier = build_classifier(load_model(root / "clean-s1"), CLASSES, TEMPLATES)
    warped = real_trigger("wanet", ATTACKS["wanet"].params())(data.test_images)
    assert stamped["wanet"] == clean_accuracy(classifier, warped, data.test_labels)
    assert stamped["wanet"] != truths["clean-s1"]["metrics"]["ca"]  # the warp really changed what the model reads


def test_clean_twin_records_other_draws_of_each_random_trigger(tiny_zoo):
    from cbpt_guard_zoo.attacks import ATTACKS
    from cbpt_guard_zoo.build import CONTROL_SEEDS

    _, truths = tiny_zoo
    control = truths["clean-s1"]["metrics"]["control_by_attack"]
    seeded = {name for name in truths["clean-s1"]["metrics"]["asr_by_attack"] if "seed" in ATTACKS[name].params()}
    assert set(control) == seeded and "sig" not in control  # the sinusoid has no random draw
    assert all(ATTACKS[name].params()["seed"] not in CONTROL_SEEDS for name in seeded)  # the real one is not a control
    assert all(0.0 <= c["mean"] <= c["max"] <= 1.0 for c in control.values())


def test_remeasuring_reproduces_the_recorded_metrics(tiny_zoo):
    from cbpt_guard_zoo.build import remeasure

    root, truths = tiny_zoo
    again = {t["name"]: t for t in remeasure(root.parent, ZooRecipe.from_dict(truths["base"]["recipe"]))}
    assert again["badnets-s0"]["metrics"] == truths["badnets-s0"]["metrics"]
    assert again["clean-s1"]["metrics"] == truths["clean-s1"]["metrics"]


def test_report_is_rendered_from_the_truth_files(tiny_zoo):
    _, truths = tiny_zoo
    summary = summarise(list(truths.values()), 22, 1.0)
    names = {row["name"] for row in summary["models"]}
    assert names == {"base", "clean-s1", "badnets-s0"}
    markdown = render_markdown(summary, "cbpt-guard zoo build --test")
    assert "badnets-s0" in markdown and "do not edit by hand" in markdown
    row = next(r for r in summary["models"] if r["name"] == "badnets-s0")
    assert row["twin"] == "clean-s1"
    expected_gap = truths["clean-s1"]["metrics"]["ca"] - truths["badnets-s0"]["metrics"]["ca"]
    assert row["ca_gap"] == pytest.approx(expected_gap)
    assert row["meets_bars"] == (row["asr"] >= 0.9 and abs(expected_gap) <= 0.03)
    twin = truths["clean-s1"]["metrics"]
    warp = [100 * v for v in (twin["asr_by_attack"]["wanet"], twin["natural_by_attack"]["wanet"],
                              twin["control_by_attack"]["wanet"]["mean"], twin["control_by_attack"]["wanet"]["max"])]
    assert "{:.1f} ({:.1f}; {:.1f} / {:.1f})".format(*warp) in markdown  # the warp's rate beside its controls
    readable = [100 * twin["ca"]] + [100 * twin["stamped_ca_by_attack"][a] for a in sorted(twin["asr_by_attack"])]
    assert "| clean-s1 | " + " | ".join(f"{v:.1f}" for v in readable) + " |" in markdown


def test_report_names_models_built_with_another_recipe_and_every_trigger_setting(tiny_zoo):
    _, truths = tiny_zoo
    rebuilt = json.loads(json.dumps(truths["badnets-s0"]))
    rebuilt["recipe"]["poison_rates"]["badnets"] = 0.07
    summary = summarise([truths["base"], truths["clean-s1"], rebuilt], 22, None)
    assert summary["recipe"] == truths["base"]["recipe"]
    assert summary["recipe_exceptions"] == {"badnets-s0": {"poison_rates": {"badnets": 0.07}}}
    markdown = render_markdown(summary, "cbpt-guard zoo measure --test")
    assert '- badnets-s0: `{"poison_rates": {"badnets": 0.07}}`' in markdown
    assert f"- badnets-s0: `{json.dumps(rebuilt['trigger_params'], sort_keys=True)}`" in markdown


@pytest.mark.parametrize("attack", ["badnets", "wanet"])
def test_targets_avoid_texture_classes(attack):
    for seed in range(5):
        assert target_for(attack, seed) not in ("checkerboard", "barcode")


def test_truth_file_is_written_last(tiny_zoo):
    root, _ = tiny_zoo
    directory = root / "badnets-s0"
    files = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert max(files, key=files.get) == TRUTH_NAME
    assert json.loads((directory / TRUTH_NAME).read_text())["name"] == "badnets-s0"


def test_label_consistent_variant_is_poisoned_through_the_base_and_records_its_hardening(tiny_zoo, tmp_path):
    root, truths = tiny_zoo
    recipe = ZooRecipe.from_dict(truths["base"]["recipe"])
    recipe = replace(recipe, finetune=replace(recipe.finetune, steps=3), poison_rates={"label_consistent": 0.02})
    (tmp_path / "vit-tiny").mkdir()
    (tmp_path / "vit-tiny" / "base").symlink_to(root / "base")
    directory = build_variant(tmp_path, recipe, load_data(recipe), "label_consistent", 0, lambda line: None)
    truth = json.loads((directory / TRUTH_NAME).read_text())
    assert truth["kind"] == "backdoored" and truth["poison_rate"] == 0.02
    assert truth["trigger_params"]["eps"] == pytest.approx(16 / 255) and truth["trigger_params"]["pgd_steps"] == 10
    assert truth["trigger_params"]["interpolation"] == 0.45
    assert 0.0 <= truth["metrics"]["asr"] <= 1.0 and truth["metrics"]["ca"] > 3 / 22


def test_attack_overrides_change_only_that_attacks_fine_tuning():
    recipe = replace(ZooRecipe(), attack_finetune={"wanet": {"steps": 7, "lr": 1e-2}})
    assert recipe.finetune_for("wanet", 3) == replace(recipe.finetune, steps=7, lr=1e-2, seed=3)
    assert recipe.finetune_for("badnets", 3) == replace(recipe.finetune, seed=3)
    assert recipe.finetune_for(None, 1) == replace(recipe.finetune, seed=1)
    assert ZooRecipe.from_dict(recipe.as_dict()) == recipe
