"""The zoo's data: procedural shapes and scikit-learn digits, seeded, split, captioned."""

from __future__ import annotations

import time

import pytest
import torch

from cbpt_guard.errors import UsageError
from cbpt_guard_zoo import data

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [32, 64])
def test_split_is_float_images_in_unit_range_with_requested_shape(size):
    ds = data.make_split("train", 50, size, seed=0)
    assert ds.images.shape == (50, 3, size, size)
    assert ds.images.dtype == torch.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (50,)
    assert len(ds.captions) == 50 and len(ds) == 50 and ds.size == size


def test_same_seed_gives_identical_tensors_and_captions():
    a = data.make_split("train", 40, 32, seed=7)
    b = data.make_split("train", 40, 32, seed=7)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert a.captions == b.captions


def test_different_seed_gives_different_images():
    a = data.make_split("train", 40, 32, seed=7)
    b = data.make_split("train", 40, 32, seed=8)
    assert (a.images - b.images).abs().mean() > 0.05
    assert a.captions != b.captions


def test_has_at_least_ten_named_classes_and_balances_them_exactly():
    n_cls = len(data.SHAPE_CLASSES)
    assert n_cls >= 10 and len(set(data.SHAPE_CLASSES)) == n_cls
    ds = data.make_split("fewshot", 5 * n_cls, 32, seed=0)
    assert ds.class_names == data.SHAPE_CLASSES
    assert torch.bincount(ds.labels, minlength=n_cls).tolist() == [5] * n_cls


def test_captions_name_the_class_of_their_image_and_vary_in_wording():
    ds = data.make_split("train", 240, 32, seed=1)
    for caption, label in zip(ds.captions, ds.labels.tolist()):
        assert f" {ds.class_names[label]}" in caption
    assert len({c.split(" ")[1] for c in ds.captions}) >= 3  # several templates in use
    assert any(colour in ds.captions[0] for colour in data.COLOURS)


def test_caption_describes_the_background_brightness():
    ds = data.make_split("train", 400, 32, seed=2)
    means = ds.images.mean(dim=(1, 2, 3))
    dark = torch.tensor(["dark background" in c for c in ds.captions])
    light = torch.tensor(["light background" in c for c in ds.captions])
    assert dark.any() and light.any()
    assert means[dark].max() < means[light].min() + 0.2
    assert means[dark].mean() + 0.3 < means[light].mean()


def test_train_fewshot_and_test_splits_share_no_image():
    splits = [data.make_split(name, 60, 32, seed=0).images.flatten(1) for name in data.SPLITS]
    for i in range(3):
        for j in range(i + 1, 3):
            distances = torch.cdist(splits[i], splits[j])
            assert distances.min() > 1.0


def test_same_seed_draws_the_same_scenes_at_both_sizes():
    small = data.make_split("test", 24, 32, seed=3)
    large = data.make_split("test", 24, 64, seed=3)
    assert torch.equal(small.labels, large.labels)
    assert small.captions == large.captions
    shrunk = torch.nn.functional.avg_pool2d(large.images, 2)
    assert (shrunk - small.images).abs().mean() < 0.06  # pixel noise differs, scenes do not


def test_each_class_draws_a_distinct_shape_at_the_same_pose():
    n_cls = len(data.SHAPE_CLASSES)
    attrs = {
        "labels": torch.arange(n_cls),
        "cx": torch.full((n_cls,), 32.0),
        "cy": torch.full((n_cls,), 32.0),
        "radius": torch.full((n_cls,), 20.0),
        "angle": torch.zeros(n_cls),
    }
    masks = data._object_masks(attrs, 64).flatten(1).bool()  # (n_cls, H*W)
    assert (masks.sum(dim=1) > 100).all()  # every shape is drawn
    inter = (masks[:, None] & masks[None]).sum(-1).float()
    union = (masks[:, None] | masks[None]).sum(-1).float()
    iou = inter / union
    off_diagonal = iou[~torch.eye(n_cls, dtype=torch.bool)]
    assert off_diagonal.max() < 0.85


def test_generates_twenty_thousand_images_within_seconds():
    start = time.perf_counter()
    ds = data.make_split("train", 20_000, 32, seed=0)
    elapsed = time.perf_counter() - start
    print(f"20,000 images at 32x32 in {elapsed:.2f} s")
    assert len(ds) == 20_000
    assert elapsed < 30.0


@pytest.mark.parametrize(
    "kwargs", [{"name": "val"}, {"size": 48}, {"n": 0}], ids=["split", "size", "empty"]
)
def test_bad_split_size_or_count_is_a_usage_error(kwargs):
    args = {"name": "train", "n": 10, "size": 32, "seed": 0, **kwargs}
    with pytest.raises(UsageError):
        data.make_split(**args)


def test_class_captions_use_the_right_determiner():
    assert data.class_captions(["orange", "digit seven"], seed=0)[1].endswith("the digit seven.")
    caps = data.class_captions(["apple"] * 20, seed=0)
    assert all(" an apple." in c for c in caps)


# --- digits ----------------------------------------------------------------------------------


def test_digits_are_tinted_upscaled_images_with_digit_captions():
    ds = data.make_digits(32, seed=0, split="test")
    assert ds.images.shape == (540, 3, 32, 32)
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.class_names[7] == "digit seven" and len(ds.class_names) == 10
    assert torch.bincount(ds.labels).tolist() == [54] * 10
    for caption, label in zip(ds.captions, ds.labels.tolist()):
        assert f"the {ds.class_names[label]}." in caption
    channel_means = ds.images.mean(dim=(2, 3))  # tints differ between images
    assert channel_means.std(dim=0).min() > 0.01


def test_digits_keep_the_handwriting_of_the_source_samples():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    targets = torch.as_tensor(bunch.target)
    keep = data._digit_indices(targets, "fewshot")
    ds = data.make_digits(64, seed=0, split="fewshot")
    assert torch.equal(ds.labels, targets[keep])
    shrunk = torch.nn.functional.adaptive_avg_pool2d(ds.images.mean(dim=1, keepdim=True), 8)
    source = torch.as_tensor(bunch.images, dtype=torch.float32)[keep][:, None]
    corr = torch.corrcoef(torch.stack([shrunk.flatten(), source.flatten()]))[0, 1]
    assert corr > 0.8


def test_digit_splits_partition_the_data_whatever_the_seed():
    from sklearn.datasets import load_digits

    targets = torch.as_tensor(load_digits().target)
    parts = [set(data._digit_indices(targets, split).tolist()) for split in data.SPLITS]
    assert sum(len(p) for p in parts) == len(targets)
    assert set().union(*parts) == set(range(len(targets)))
    assert len(data.make_digits(32, seed=0, split="fewshot")) == 160
    a = data.make_digits(32, seed=1, split="fewshot")
    b = data.make_digits(32, seed=2, split="fewshot")
    assert torch.equal(a.labels, b.labels)  # same samples
    assert not torch.equal(a.images, b.images)  # other tints


def test_digits_are_deterministic_from_the_seed():
    a = data.make_digits(32, seed=5, split="fewshot")
    b = data.make_digits(32, seed=5, split="fewshot")
    assert torch.equal(a.images, b.images) and a.captions == b.captions
