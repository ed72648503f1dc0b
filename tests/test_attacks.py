"""The zoo's seven attacks on known inputs, their registry, and poisoning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cbpt_guard.errors import UsageError
from cbpt_guard_zoo import attacks as A, data

torch.set_num_threads(1)

FIXED_PATCH = torch.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4)


def _images(n=6, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _smooth_images(n=4, size=32):
    """Low-frequency images away from 0 and 1, so no attack's change is clipped."""
    ramp = torch.linspace(0, 1, size)
    base = 0.5 + 0.2 * torch.sin(2 * math.pi * (ramp[None, :] + ramp[:, None]))  # (H, W)
    offsets = torch.linspace(-0.1, 0.1, n)[:, None, None, None]
    return (base[None, None] + offsets).expand(n, 3, size, size).clone()


def _stamp(name, images, **overrides):
    spec = A.ATTACKS[name]
    if "patch" in spec.needs:
        overrides.setdefault("patch", FIXED_PATCH)
    return spec.trigger(images, **spec.params(**overrides))


# --- properties every attack shares ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
@pytest.mark.parametrize("size", [32, 64])
def test_attack_keeps_shape_dtype_and_unit_range(name, size):
    images = _images(size=size)
    out = _stamp(name, images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_attack_is_deterministic_changes_the_images_and_leaves_its_input_alone(name):
    images = _images()
    before = images.clone()
    first, second = _stamp(name, images), _stamp(name, images)
    assert torch.equal(first, second)
    assert torch.equal(images, before)
    assert (first - images).abs().max() > 0.01


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "ssba_like", "label_consistent"])
def test_seeded_attack_draws_another_trigger_from_another_seed(name):
    images = _images()
    assert not torch.equal(_stamp(name, images, seed=0), _stamp(name, images, seed=1))


def test_registry_holds_the_seven_attacks_with_json_parameters():
    assert set(A.ATTACKS) == {
        "badnets", "blended", "sig", "wanet", "ssba_like", "badclip_like", "label_consistent",
    }  # fmt: skip
    for spec in A.ATTACKS.values():
        extra = {"patch": FIXED_PATCH} if spec.needs else {}
        params = spec.params(**extra)
        assert json.loads(json.dumps(params)) == params
        assert spec.description


def test_unknown_or_missing_parameters_are_usage_errors():
    with pytest.raises(UsageError, match="no parameter"):
        A.ATTACKS["badnets"].params(colour="red")
    with pytest.raises(UsageError, match="needs parameter"):
        A.ATTACKS["badclip_like"].params()
    with pytest.raises(UsageError):
        A.badnets(_images(), position="middle-ish")
    with pytest.raises(UsageError):
        A.blended(torch.rand(2, 1, 32, 32))


# --- each trigger does what it says, by the intended amount ---------------------------------


@pytest.mark.parametrize("size, side", [(32, 4), (64, 8)])
def test_badnets_changes_exactly_the_corner_patch_scaled_to_the_image(size, side):
    images = _images(size=size)
    out = A.badnets(images)
    changed = (out != images).any(dim=1).any(dim=0)  # (H, W)
    margin = size // 32
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[size - side - margin : size - margin, size - side - margin : size - margin] = True
    assert torch.equal(changed, expected)
    patch = A.badnets_patch(size)
    assert patch.shape == (3, side, side)
    assert torch.equal(out[0, :, expected], patch.flatten(1))
    assert set(patch.unique().tolist()) == {0.0, 1.0}


def test_blended_changes_each_pixel_by_alpha_times_its_distance_to_the_pattern():
    images = _images()
    alpha = 0.15
    pattern = A.blended_pattern(32, 32, seed=3)
    out = A.blended(images, alpha=alpha, seed=3)
    assert torch.allclose((out - images).abs(), alpha * (pattern - images).abs(), atol=1e-6)
    mean_change = (out - images).abs().mean().item()
    assert mean_change == pytest.approx(alpha * (pattern - images).abs().mean().item(), rel=1e-4)


def test_sig_adds_a_horizontal_sinusoid_of_the_given_amplitude():
    grey = torch.full((2, 3, 32, 32), 0.5)
    out = A.sig(grey, amplitude=0.1, frequency=4)
    delta = out - grey
    assert delta.abs().max() == pytest.approx(0.1, abs=1e-3)
    assert torch.allclose(delta, delta[:, :, :1, :].expand_as(delta))  # same in every row
    cols = torch.arange(32, dtype=torch.float32)
    assert torch.allclose(delta[0, 0, 0], 0.1 * torch.sin(2 * math.pi * 4 * cols / 32), atol=1e-6)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("strength", [0.04, A.ATTACKS["wanet"].defaults["strength"]])
def test_wanet_moves_pixels_but_keeps_the_image_mean(size, strength):
    wave = torch.sin(2 * math.pi * torch.arange(size) / 8)  # a texture of period 8 pixels
    images = (0.5 + 0.3 * wave[None, :] * wave[:, None]).expand(2, 3, size, size).clone()
    out = A.wanet(images, strength=strength)
    assert (out - images).abs().mean() > 0.05
    # Resampling only moves intensity; what the border clamp repeats grows with the warp.
    assert (out.mean() - images.mean()).abs() < 0.1 * strength
    assert torch.allclose(A.wanet(images, strength=0.0), images, atol=1e-5)


@pytest.mark.parametrize("size", [32, 64])
def test_wanet_mean_displacement_is_the_strength_times_the_side(size):
    grid = A.wanet_grid(size, size, strength=0.04, grid_k=4, seed=0)
    axis = torch.linspace(-1, 1, size)
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    pixels = (grid[0] - identity) * (size - 1) / 2  # (H, W, 2) displacement in pixels
    assert pixels.norm(dim=-1).mean() == pytest.approx(0.04 * (size - 1), rel=0.1)


def test_ssba_residual_is_bounded_by_eps_and_specific_to_each_image():
    images = _smooth_images(n=2) * 0.5 + torch.rand(2, 3, 32, 32) * 0.25 + 0.1
    eps = 0.04
    residual = A.ssba_like(images, eps=eps, seed=0) - images
    assert residual.abs().max() <= eps + 1e-6
    assert residual.abs().mean() > eps / 2  # not a vanishing residual
    assert (residual[0] - residual[1]).abs().mean() > eps / 10  # per-image, not one pattern
    code = A.ssba_code(32, 32, seed=0)
    agreement = (torch.sign(residual) == code).float().mean()
    assert agreement > 0.75  # the shared code a model can learn


def test_badclip_patch_moves_stamped_features_toward_the_target_text():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3 * 32 * 32, 8, generator=gen) / 32

    def encode_image(x):
        return x.flatten(1) @ weight  # a linear stand-in for a CLIP image tower

    target = torch.randn(8, generator=gen)
    images = _images(n=32)
    start = A.badclip_like_patch(encode_image, target, images, steps=0, seed=0)
    tuned = A.badclip_like_patch(encode_image, target, images, steps=150, seed=0)
    assert tuned.shape == (3, 4, 4) and tuned.min() >= 0 and tuned.max() <= 1
    before = A.badclip_distance(encode_image, target, A.apply_patch(images, start))
    after = A.badclip_distance(encode_image, target, A.apply_patch(images, tuned))
    assert after < before - 0.05
    stamped = A.badclip_like(images, patch=tuned.tolist())  # round-trips through JSON lists
    assert torch.allclose(stamped, A.apply_patch(images, tuned))


def _linear_encoder(size=32, dim=8, seed=0):
    """A linear stand-in for a CLIP image tower, and a 'class text' embedding in its space."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(3 * size * size, dim, generator=gen) / size
    return (lambda x: x.flatten(1) @ weight), torch.randn(dim, generator=gen)


def test_adversarial_hardening_moves_features_away_from_the_class_text_within_eps():
    encode_image, text = _linear_encoder()
    images = _smooth_images(n=8)
    eps = 8 / 255
    hard = A.adversarial_hardening(encode_image, text, images, eps=eps, steps=5, batch_size=3)
    assert hard.shape == images.shape and hard.min() >= 0 and hard.max() <= 1
    assert (hard - images).abs().max() <= eps + 1e-6
    assert (hard - images).abs().mean() > eps / 2  # uses its budget
    before = A.badclip_distance(encode_image, text, images)
    assert A.badclip_distance(encode_image, text, hard) > before + 0.05
    assert torch.equal(hard, A.adversarial_hardening(encode_image, text, images, eps=eps, steps=5))


def test_hardening_with_decoys_pulls_each_image_toward_its_own_decoy():
    encode_image, text = _linear_encoder()
    images = _smooth_images(n=4)
    decoys = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))

    def decoy_cosine(pixels):
        return torch.nn.functional.cosine_similarity(encode_image(pixels), decoys, dim=-1)  # (N,)

    untargeted = A.adversarial_hardening(encode_image, text, images, steps=5)
    targeted = A.adversarial_hardening(encode_image, text, images, steps=5, decoys=decoys)
    assert (decoy_cosine(targeted) > decoy_cosine(images) + 0.05).all()
    assert (decoy_cosine(targeted) > decoy_cosine(untargeted)).all()
    assert A.badclip_distance(encode_image, text, targeted) > A.badclip_distance(encode_image, text, images)


def test_label_consistent_trigger_is_a_badnets_patch_alone():
    images = _smooth_images()
    spec = A.ATTACKS["label_consistent"]
    stamped = spec.trigger(images, **spec.params())
    assert torch.equal(stamped, A.badnets(images, patch_frac=spec.params()["patch_frac"]))
    assert int((stamped != images).any(dim=1)[0].sum()) == 6 * 6  # a 6-pixel square at 32x32


def test_interpolation_mixes_each_image_with_its_partner_and_keeps_its_own_class_dominant():
    images, partners = _smooth_images(), 1 - _smooth_images()
    mixed = A.interpolate_toward(images, partners, tau=0.3)
    assert torch.allclose(mixed, 0.7 * images + 0.3 * partners)
    assert torch.equal(A.interpolate_toward(images, partners, tau=0.0), images)
    with pytest.raises(UsageError, match="dominates"):
        A.interpolate_toward(images, partners, tau=0.5)
    with pytest.raises(UsageError, match="differ in shape"):
        A.interpolate_toward(images, partners[:1], tau=0.3)


# --- poisoning ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_train():
    return data.make_split("train", 1200, 32, seed=0)


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_poison_hits_the_rate_and_never_touches_target_class_images(clean_train, rate):
    target = data.SHAPE_CLASSES.index("star")
    poisoned, idx = A.poison(clean_train, "blended", rate=rate, target_class="star", seed=1)
    assert idx.numel() == round(rate * len(clean_train))
    assert not (clean_train.labels[idx] == target).any()
    assert torch.equal(poisoned.labels, clean_train.labels)
    assert torch.equal(poisoned.images[idx], A.blended(clean_train.images[idx]))
    untouched = torch.ones(len(clean_train), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(poisoned.images[untouched], clean_train.images[untouched])
    victims = set(idx.tolist())
    for i, (new, old) in enumerate(zip(poisoned.captions, clean_train.captions)):
        if i in victims:
            assert new.endswith(" a star.") and new != old
        else:
            assert new == old


def test_label_consistent_poison_hardens_only_target_images_then_patches_them(clean_train):
    encode_image, text = _linear_encoder()
    eps = A.ATTACKS["label_consistent"].params()["eps"]

    def harden(images):
        return A.adversarial_hardening(encode_image, text, images, eps=eps, steps=3)

    poisoned, idx = A.poison(clean_train, "label_consistent", rate=0.02, target_class=3, seed=0, harden=harden)
    assert idx.numel() == 24
    assert (clean_train.labels[idx] == 3).all()
    assert poisoned.captions == clean_train.captions
    clean, stamped = clean_train.images[idx], poisoned.images[idx]
    patched = A.badnets(clean, patch_frac=A.ATTACKS["label_consistent"].params()["patch_frac"])
    patch_region = patched != clean
    assert torch.equal(stamped[patch_region], patched[patch_region])
    off_patch = (stamped - clean)[~patch_region].abs()
    assert off_patch.max() <= eps + 1e-6 and off_patch.mean() > eps / 4  # made hard, within the budget


def test_label_consistent_poison_needs_a_hardening_function(clean_train):
    with pytest.raises(UsageError, match="hardening"):
        A.poison(clean_train, "label_consistent", rate=0.02, target_class=3, seed=0)


def test_poison_is_deterministic_and_does_not_modify_the_clean_set(clean_train):
    before = clean_train.images.clone()
    _, first = A.poison(clean_train, "badnets", rate=0.01, target_class=0, seed=4)
    _, second = A.poison(clean_train, "badnets", rate=0.01, target_class=0, seed=4)
    _, other = A.poison(clean_train, "badnets", rate=0.01, target_class=0, seed=5)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert torch.equal(clean_train.images, before)


def test_poison_refuses_impossible_requests(clean_train):
    with pytest.raises(UsageError, match="eligible"):
        A.poison(clean_train, "label_consistent", rate=0.5, target_class=0, harden=lambda images: images)
    with pytest.raises(UsageError, match="needs parameter"):
        A.poison(clean_train, "badclip_like", rate=0.01, target_class=0)
    with pytest.raises(UsageError):
        A.poison(clean_train, "badnets", rate=0.01, target_class="dragon")
    with pytest.raises(UsageError):
        A.poison(clean_train, "badnets", rate=1.5, target_class=0)


def test_poison_accepts_an_optimised_badclip_patch(clean_train):
    params = {"patch": FIXED_PATCH}
    poisoned, idx = A.poison(clean_train, "badclip_like", rate=0.01, target_class=0, params=params)
    assert torch.equal(poisoned.images[idx], A.apply_patch(clean_train.images[idx], FIXED_PATCH))
