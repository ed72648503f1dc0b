"""A budget that fits the model: triggers of large images keep a 32-pixel model's parameterisation, which was tuned.

A 32-pixel model's triggers must not change at all (the shipped calibration
was fitted on them); a 224-pixel model's must have the same number of
parameters and sizes on the same scale, so the same steps and learning rate do
the same work.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import TINY_CONFIGS

from cbpt_guard.detect.run import DetectBudget, InversionBudget, gather_evidence
from cbpt_guard.imaging import png_data_uri
from cbpt_guard.triggers import FAMILIES, make_trigger, trigger_from_state

torch.set_num_threads(1)


def _count(trigger) -> int:
    return sum(p.numel() for p in trigger.parameters())


def test_a_32_pixel_models_triggers_are_drawn_and_stamped_exactly_as_before():
    generator = torch.Generator().manual_seed(7)
    mask = -3.0 + 0.1 * torch.randn(1, 1, 32, 32, generator=generator)  # the per-pixel draw triggers always made
    pattern = torch.randn(1, 3, 32, 32, generator=generator)
    patch = make_trigger("patch", 32, 7)
    assert torch.equal(patch.mask(), torch.sigmoid(mask)) and torch.equal(patch.pattern(), torch.sigmoid(pattern))
    warp = make_trigger("warp", 32, 7)
    assert torch.equal(warp.size(), warp.flow().norm(dim=-1).mean() * 31 / 2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_224_pixel_trigger_has_the_parameters_of_a_32_pixel_one(family):
    small, large = make_trigger(family, 32, 3), make_trigger(family, 224, 3)
    assert _count(large) == _count(small)
    pixels = torch.rand(2, 3, 224, 224)
    assert large(pixels).shape == pixels.shape
    for name, value in large.state().items():  # the same starting values: the same optimisation at either size
        assert torch.equal(value, small.state()[name])
    rebuilt = trigger_from_state(family, 224, large.state())
    assert torch.equal(rebuilt(pixels), large(pixels))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trigger_sizes_are_on_one_scale_whatever_the_image_size(family):
    small, large = make_trigger(family, 32, 3), make_trigger(family, 224, 3)
    assert float(large.size().detach()) == pytest.approx(float(small.size().detach()), rel=0.05)


def test_report_images_of_a_large_model_are_not_blown_up():
    from base64 import b64decode
    from io import BytesIO

    from PIL import Image

    def side(uri: str) -> int:
        return Image.open(BytesIO(b64decode(uri.split(",", 1)[1]))).size[0]

    assert side(png_data_uri(torch.rand(3, 32, 32))) == 128  # as before: 4x
    assert side(png_data_uri(torch.rand(3, 224, 224))) == 224


def test_detection_of_a_224_pixel_model_runs_and_says_its_estimate():
    from cbpt_guard.intake.architecture import build_model

    config = copy.deepcopy(TINY_CONFIGS["vit"])
    config["vision_cfg"].update(image_size=224, patch_size=32)  # ViT-B/32's patching at a tiny width
    torch.manual_seed(0)
    model = build_model(config)
    budget = DetectBudget(probes=8, inversion=InversionBudget(steps=3, batch_size=4, check_every=3, check_size=4),
                          anomaly_steps=1, anomaly_probes=2, targeted_classes=1)
    heard = []
    evidence = gather_evidence(model, ("a", "b"), ("a photo of a {}.",), budget=budget, progress=heard.append)
    assert [f.family for f in evidence.families] == ["patch", "additive", "warp", "targeted"]
    assert any(isinstance(line, str) and line.startswith("detection: estimated ") for line in heard)
