"""CBPT losses and the tuning loop: only the context learns, the model stays bit-identical, the trigger term works."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cbpt_guard.classifier import build_classifier
from cbpt_guard.errors import UsageError
from cbpt_guard.intake.architecture import build_model
from cbpt_guard.purify.losses import backdoor_loss, clean_loss, drift_loss, total_loss
from cbpt_guard.purify.trainer import pseudo_labels, tune_prompts
from cbpt_guard.triggers import PatchTrigger
from tiny_models import TINY_CONFIGS

torch.set_num_threads(1)

CLASSES = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {}."]
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])


def _model(family: str = "vit"):
    """A tiny model at open_clip's own initialisation (distinct enough features for a loss to move)."""
    torch.manual_seed(0)
    return build_model(copy.deepcopy(TINY_CONFIGS[family]))


def _data(count: int = 32):
    """Noisy solid-colour images whose label is their colour: classes the frozen features can separate."""
    labels = torch.arange(count) % len(CLASSES)  # (N,)
    noise = 0.1 * torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return (COLOURS[labels][:, :, None, None] + noise).clamp(0, 1), labels  # (N, 3, 32, 32), (N,)


def _corner_patch() -> PatchTrigger:
    """A fixed 12x12 random-pattern patch in the top-left corner (a stand-in for an inverted trigger)."""
    trigger = PatchTrigger(32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trigger.mask_logit.fill_(-20.0)
        trigger.mask_logit[..., :12, :12] = 20.0
    return trigger


def test_drift_loss_is_zero_for_the_original_and_one_for_orthogonal_embeddings():
    original = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert drift_loss(original, original).abs() < 1e-6
    assert drift_loss(torch.eye(2), torch.eye(2).flip(0)) == pytest.approx(1.0)


def test_backdoor_loss_scores_stamped_images_against_the_clean_labels():
    text = torch.eye(3)  # (C, d)
    stamped = torch.eye(3)[[2, 2]]  # both stamped images land on class 2
    wrong, right = (backdoor_loss(stamped, text, torch.tensor(y), 10.0) for y in ([0, 1], [2, 2]))
    assert right < 1e-3 < wrong
    assert backdoor_loss(stamped[:0], text, torch.tensor([], dtype=torch.long), 10.0) == 0


def test_total_loss_weights_the_parts_and_reports_them_as_floats():
    generator = torch.Generator().manual_seed(0)
    image, stamped = (F.normalize(torch.randn(4, 8, generator=generator), dim=-1) for _ in range(2))
    text, original = (F.normalize(torch.randn(3, 8, generator=generator), dim=-1) for _ in range(2))
    labels = torch.tensor([0, 1, 2, 0])
    total, parts = total_loss(image, stamped, text, original, labels, labels, 5.0, l_bd=2.0, l_drift=3.0)
    assert set(parts) == {"total", "clean", "backdoor", "drift"}
    assert all(isinstance(value, float) for value in parts.values())
    assert parts["clean"] == pytest.approx(clean_loss(image, text, labels, 5.0).item())
    assert total.item() == pytest.approx(parts["clean"] + 2.0 * parts["backdoor"] + 3.0 * parts["drift"], rel=1e-6)


@pytest.mark.parametrize("family", ["vit", "resnet"])  # resnet: batch-norm statistics must not move either
def test_tuning_leaves_every_model_tensor_bit_identical_and_optimises_only_ctx(family, monkeypatch):
    model = _model(family)
    model.train()  # tuning must switch to eval itself
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    given: list[list[torch.Tensor]] = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            params = list(params)
            given.append(params)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    images, labels = _data(16)
    result = tune_prompts(model, CLASSES, TEMPLATES, images, labels, [_corner_patch()],
                          n_ctx=4, steps=3, batch_size=8, seed=0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert len(given) == 1 and len(given[0]) == 1
    (ctx,) = given[0]
    assert ctx.shape == (len(CLASSES), 4, 32)
    assert torch.equal(ctx.detach(), result.ctx)


def test_trigger_term_lowers_the_backdoor_loss_and_curves_are_recorded():
    model = _model()
    images, labels = _data()
    trigger = _corner_patch()
    classifier = build_classifier(model, CLASSES, TEMPLATES)
    with torch.no_grad():
        stamped = classifier.features(trigger(images))  # (N, d): what the loss sees, checked independently here
    with torch.no_grad():  # the patch replaces its corner and nothing else
        torch.testing.assert_close(trigger(images)[:, :, 12:, 12:], images[:, :, 12:, 12:], atol=1e-6, rtol=0)
        pattern = trigger.pattern()[:, :, :12, :12].expand(32, -1, -1, -1)  # (N, 3, 12, 12)
        torch.testing.assert_close(trigger(images)[:, :, :12, :12], pattern, atol=1e-6, rtol=0)
    result = tune_prompts(model, CLASSES, TEMPLATES, images, labels, [trigger],
                          n_ctx=4, steps=40, lr=2e-3, batch_size=16, seed=0)
    before = backdoor_loss(stamped, result.original_embeddings, labels, classifier.scale).item()
    after = backdoor_loss(stamped, result.class_embeddings, labels, classifier.scale).item()
    assert after < 0.5 * before
    assert {name: len(curve) for name, curve in result.curves.items()} == dict.fromkeys(
        ["total", "clean", "backdoor", "drift"], 40)
    assert result.curves["drift"][0] == pytest.approx(0.0, abs=1e-6)  # tuning starts at the hand-written prompts
    assert sum(result.curves["backdoor"][-5:]) < sum(result.curves["backdoor"][:5])
    assert all(math.isfinite(value) for curve in result.curves.values() for value in curve)
    assert result.class_embeddings.shape == (len(CLASSES), 32)
    assert torch.allclose(result.class_embeddings.norm(dim=-1), torch.ones(len(CLASSES)))
    assert result.seconds > 0


def test_same_seed_gives_identical_context_and_another_seed_does_not():
    model = _model()
    images, labels = _data(16)
    runs = [tune_prompts(model, CLASSES, TEMPLATES, images, labels, [_corner_patch()],
                         n_ctx=4, steps=5, batch_size=4, seed=seed) for seed in (0, 0, 1)]
    assert torch.equal(runs[0].ctx, runs[1].ctx)
    assert runs[0].curves == runs[1].curves
    assert not torch.equal(runs[0].ctx, runs[2].ctx)


def test_tuning_without_triggers_is_plain_prompt_tuning():
    images, labels = _data(8)
    result = tune_prompts(_model(), CLASSES, TEMPLATES, images, labels, [], n_ctx=4, steps=2, batch_size=4)
    assert result.curves["backdoor"] == [0.0, 0.0]


def test_labels_outside_the_class_list_are_a_usage_error():
    images, labels = _data(8)
    with pytest.raises(UsageError, match="labels"):
        tune_prompts(_model(), CLASSES, TEMPLATES, images, labels + 1, [], steps=1)


def test_pseudo_labels_are_the_classifiers_clean_predictions():
    classifier = build_classifier(_model(), CLASSES, TEMPLATES)
    images, _ = _data(8)
    labels = pseudo_labels(classifier, images)
    assert labels.dtype == torch.long and labels.shape == (8,)
    assert torch.equal(labels, classifier(images).argmax(dim=-1))
