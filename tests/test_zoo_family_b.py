"""Family B: another population of the zoo, built by the same command (a tiny config here; the real one in ZOO-B.md).

It differs from family A in every axis the product does not control (data set and classes, image size, widths,
patch size), and one of its classes is a natural attractor whose pull every model records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cbpt_guard_zoo import objects
from cbpt_guard_zoo.build import PULL_SEEDS, TRUTH_NAME, ZooRecipe, default_recipe, patch_pull, read_truths
from cbpt_guard_zoo.configs import zoo_config
from cbpt_guard_zoo.families import FAMILY_A, FAMILY_B, family_of

BUILD = ["build", "--config", "vit-b-tiny", "--attacks", "badnets,blended", "--seeds", "1", "--clean", "1",
         "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_zoo_b(tmp_path_factory):
    """A tiny family-B zoo built by the zoo command: base, a clean twin, Blended at the attractor, BadNets elsewhere."""
    from cbpt_guard_zoo.cli import zoo_group

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("zoo-b")
    result = CliRunner().invoke(zoo_group, [*BUILD, "--out", str(root / "zoo"), "--report-dir", str(root / "bench")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    truths = {t["name"]: t for t in read_truths(root / "zoo", "vit-b-tiny")}
    return root, truths


def test_family_b_differs_from_family_a_in_data_classes_size_and_architecture():
    assert not set(FAMILY_B.classes) & set(FAMILY_A.classes)
    assert len(FAMILY_B.classes) == 14 != len(FAMILY_A.classes)
    a, b = zoo_config("vit"), zoo_config("vit-b")
    assert (b["vision_cfg"]["image_size"], b["vision_cfg"]["patch_size"]) == (64, 16)
    assert b["vision_cfg"]["width"] != a["vision_cfg"]["width"] and b["embed_dim"] != a["embed_dim"]
    assert zoo_config("resnet-b")["vision_cfg"]["patch_size"] is None  # a ResNet tower
    assert {family_of(c) for c in ("vit-b", "resnet-b", "vit-b-tiny")} == {FAMILY_B}
    assert default_recipe("vit-b").image_size == 64 and default_recipe("vit") == ZooRecipe()  # family A unchanged


def test_objects_are_deterministic_balanced_and_apart_between_splits():
    first, again = objects.make_objects("test", 56, 64, 0), objects.make_objects("test", 56, 64, 0)
    assert torch.equal(first.images, again.images) and first.captions == again.captions
    assert first.images.shape == (56, 3, 64, 64) and 0.0 <= float(first.images.min()) <= float(first.images.max()) <= 1
    assert torch.bincount(first.labels, minlength=14).tolist() == [4] * 14
    train = objects.make_objects("train", 56, 64, 0)
    assert not any(torch.equal(x, y) for x in train.images for y in first.images)
    sticker = first.captions[int((first.labels == objects.CLASSES.index("sticker")).nonzero()[0])]
    assert "sticker" in sticker


def test_whole_image_backdoors_of_seed_zero_aim_at_the_attractor_and_the_others_at_ordinary_classes():
    for attack in ("blended", "sig"):
        assert FAMILY_B.target_for(attack, 0) == "sticker"
        assert {FAMILY_B.target_for(attack, s) for s in (1, 2)} <= set(FAMILY_B.target_pool)
    assert {FAMILY_B.target_for("badnets", s) for s in (0, 1, 2)} <= set(FAMILY_B.target_pool)
    assert "sticker" not in FAMILY_B.target_pool


def test_patch_pull_counts_where_patched_images_go():
    class Stub:
        def predict(self, images):  # a patch anywhere in the image (pixels exactly 0 or 1 in a block) -> sticker
            return torch.full((len(images),), objects.CLASSES.index("sticker"))

    data = objects.make_objects("test", 28, 64, 0)
    pull = patch_pull(Stub(), data.images, data.labels, FAMILY_B)
    assert pull["top"] == "sticker" and pull["top_share"] == 1.0 and pull["draws"] == len(PULL_SEEDS)
    assert sum(pull["by_class"].values()) == pytest.approx(1.0)


def test_tiny_family_b_build_trains_real_models_with_their_ground_truth(tiny_zoo_b):
    from cbpt_guard.intake import load_checkpoint

    root, truths = tiny_zoo_b
    assert set(truths) == {"base", "clean-s1", "badnets-s0", "blended-s0"}
    # family B learns more slowly than family A: the tiny base is above chance, not far above it
    assert truths["base"]["metrics"]["ca"] > 1 / 14
    assert truths["blended-s0"]["target"] == "sticker" and truths["badnets-s0"]["target"] in FAMILY_B.target_pool
    assert truths["badnets-s0"]["metrics"]["asr"] >= 0.5
    assert truths["badnets-s0"]["metrics"]["asr"] - truths["clean-s1"]["metrics"]["asr_by_attack"]["badnets"] >= 0.3
    report = load_checkpoint(root / "zoo" / "vit-b-tiny" / "badnets-s0").report
    assert report.class_count == 14 and tuple(report.image_size) == (64, 64)
    for truth in truths.values():
        pull = truth["metrics"]["pull"]
        assert pull["top"] == max(pull["by_class"], key=pull["by_class"].get)
        assert sum(pull["by_class"].values()) == pytest.approx(1.0)


def test_the_command_writes_the_family_report_from_the_truth_files(tiny_zoo_b):
    root, truths = tiny_zoo_b
    markdown = (root / "bench" / "ZOO-B.md").read_text()
    results = json.loads((root / "bench" / "results" / "zoo-b.json").read_text())
    assert markdown.startswith("# The model zoo, family B")
    assert "do not edit by hand" in markdown and "## vit-b-tiny" in markdown
    assert "--family b --config vit-b-tiny --attacks badnets,blended --seeds 1 --clean 1" in markdown
    clean = truths["clean-s1"]["metrics"]["pull"]
    assert (f"| clean-s1 | clean | - | {clean['top']} | {100 * clean['top_share']:.1f} | "
            f"{100 * clean['by_class']['sticker']:.1f} | {100 * clean['natural']['sticker']:.1f} |") in markdown
    summary = results["configs"]["vit-b-tiny"]
    assert results["family"] == "b" and results["attractor"] == "sticker"
    assert {row["name"] for row in summary["models"]} == set(truths)


def test_a_resumed_family_b_build_skips_every_built_model(tiny_zoo_b):
    from cbpt_guard_zoo.cli import zoo_group

    root, _ = tiny_zoo_b
    weights = root / "zoo" / "vit-b-tiny" / "badnets-s0" / "open_clip_model.safetensors"
    before = weights.read_bytes()
    result = CliRunner().invoke(zoo_group, [*BUILD, "--out", str(root / "zoo")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("already built, skipped") == 4
    assert weights.read_bytes() == before
    assert (root / "zoo" / "vit-b-tiny" / "badnets-s0" / TRUTH_NAME).is_file()


def test_family_b_images_folder_has_its_classes(tmp_path):
    from cbpt_guard_zoo.cli import zoo_group

    result = CliRunner().invoke(zoo_group, ["images", "--family", "b", "--out", str(tmp_path / "f"), "--per-class",
                                            "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted(FAMILY_B.classes)
    assert len(list(Path(tmp_path / "f").rglob("*.png"))) == 28


def test_a_config_of_the_other_family_is_refused(tmp_path):
    from cbpt_guard_zoo.cli import zoo_group

    result = CliRunner().invoke(zoo_group, ["build", "--out", str(tmp_path), "--family", "a", "--config", "vit-b"])
    assert result.exit_code != 0 and "belongs to family b" in str(result.exception)
    assert not any(tmp_path.iterdir())


def test_remeasuring_family_b_reproduces_every_metric_and_the_pull(tiny_zoo_b):
    from cbpt_guard_zoo.build import remeasure

    root, truths = tiny_zoo_b
    again = {t["name"]: t for t in remeasure(root / "zoo", ZooRecipe.from_dict(truths["base"]["recipe"]))}
    for name in ("base", "clean-s1", "badnets-s0"):
        assert again[name]["metrics"] == truths[name]["metrics"]
