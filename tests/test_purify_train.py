"""CBPT losses and the tuning loop: only the context learns, the model stays bit-identical, the trigger term works."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_CONFIGS

from cbpt_guard.classifier import build_classifier
from cbpt_guard.errors import UsageError
from cbpt_guard.intake.architecture import build_model
from cbpt_guard.purify.losses import distill_loss, drift_loss, leave_loss, reclassify_loss
from cbpt_guard.purify.trainer import _features, attractors, pseudo_labels, to_leave, tune_prompts
from cbpt_guard.triggers import AdditiveTrigger, PatchTrigger, WarpTrigger

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


def test_reclassify_loss_scores_stamped_images_against_the_clean_labels():
    text = torch.eye(3)  # (C, d)
    stamped = torch.eye(3)[[2, 2]]  # both stamped images land on class 2
    wrong, right = (reclassify_loss(stamped, text, torch.tensor(y), 10.0) for y in ([0, 1], [2, 2]))
    assert right < 1e-3 < wrong
    assert reclassify_loss(stamped[:0], text, torch.tensor([], dtype=torch.long), 10.0) == 0


def test_leave_loss_is_the_drawn_class_unlikelihood_over_all_copies():
    text = torch.eye(3)  # (C, d)
    stamped = torch.eye(3)[[2, 2, 0]]  # (N, d)
    drawn = torch.tensor([2, 2, 0])  # where the hand-written prompts sent each copy
    labels = torch.tensor([0, 2, 0])  # copy 1 and copy 2 were drawn to their own class: nothing to undo
    stay = torch.softmax(10.0 * stamped @ text.T, dim=-1)[0, 2]
    expected = -torch.log(1 - stay) / 3  # only copy 0 counts, divided by all three copies
    assert leave_loss(stamped, text, drawn, labels, 10.0).item() == pytest.approx(expected.item())
    assert leave_loss(stamped, text, drawn, drawn, 10.0) == 0
    moved = torch.eye(3)[[1, 2, 0]]  # copy 0 now sits on class 1, away from the class it was drawn to
    assert leave_loss(moved, text, drawn, labels, 10.0) < 0.01 * leave_loss(stamped, text, drawn, labels, 10.0)
    assert leave_loss(stamped[:0], text, drawn[:0], labels[:0], 10.0) == 0


def test_leave_margin_keeps_pushing_a_copy_that_only_just_left():
    """With margin m the drawn class is scored as if its logit were m higher: a copy on the boundary still pays."""
    text = torch.eye(3)  # (C, d)
    drawn, labels = torch.tensor([2]), torch.tensor([0])
    just_left = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, 0.99]]), dim=-1)  # class 1 barely ahead of 2
    logits = 10.0 * just_left @ text.T  # (1, C)
    handicapped = logits + torch.tensor([0.0, 0.0, 5.0])
    expected = -torch.log(1 - torch.softmax(handicapped, dim=-1)[0, 2])
    assert leave_loss(just_left, text, drawn, labels, 10.0, margin=5.0).item() == pytest.approx(expected.item())
    plain, pushed = (leave_loss(just_left, text, drawn, labels, 10.0, margin=m) for m in (0.0, 5.0))
    assert pushed > 3 * plain  # the margin keeps the gradient alive where the plain term has nearly let go
    far = torch.eye(3)[[1]]  # (1, d): well past the boundary
    assert leave_loss(far, text, drawn, labels, 10.0, margin=5.0) < 0.1 * pushed
    assert leave_loss(just_left, text, drawn, drawn, 10.0, margin=5.0) == 0  # own-class copies stay exempt

def test_distill_loss_is_zero_at_the_hand_written_prompts_and_grows_as_predictions_move():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)  # (N, d)
    original = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)  # (C, d)
    assert distill_loss(images, original, original, 10.0).abs() < 1e-6
    near = F.normalize(original + 0.1 * torch.randn(3, 8, generator=generator), dim=-1)
    assert 0 < distill_loss(images, near, original, 10.0) < distill_loss(images, original.flip(0), original, 10.0)


def test_stamps_are_extrapolated_by_the_strength_and_clipped():
    classifier = build_classifier(_model(), CLASSES, TEMPLATES)
    images, _ = _data(8)
    trigger = _corner_patch()
    with torch.no_grad():
        torch.testing.assert_close(_features(classifier, images, trigger, 1.0), classifier.features(trigger(images)))
        doubled = (2 * trigger(images) - images).clamp(0, 1)  # x + 2 (A(x) - x)
        torch.testing.assert_close(_features(classifier, images, trigger, 2.0), classifier.features(doubled))
    assert not torch.equal(doubled, trigger(images))  # the corner pattern does differ at strength 2


def test_amplified_additive_trigger_scales_its_offset():
    trigger = AdditiveTrigger(32, generator=torch.Generator().manual_seed(0))
    images = torch.full((2, 3, 32, 32), 0.5)  # mid-grey: no clipping for |2 delta| <= 0.24
    with torch.no_grad():
        torch.testing.assert_close(trigger.amplified(images, 1.0), trigger(images))
        torch.testing.assert_close(trigger.amplified(images, 2.0) - images, 2 * trigger.delta().expand(2, -1, -1, -1))


def test_amplified_warp_moves_pixels_further_instead_of_extrapolating_them():
    """A constant horizontal flow of u pixels on a horizontal wave samples it u columns on; at strength 2, 2u."""
    side, period = 32, 16.0
    trigger = WarpTrigger(side)
    with torch.no_grad():
        trigger.control.zero_()
        trigger.control[:, 0] = 2.0  # x displacement max_shift * tanh(2) everywhere, y none
    shift = trigger.max_shift * math.tanh(2.0) * (side - 1) / 2  # in pixels, about 3.7

    def wave(columns: torch.Tensor) -> torch.Tensor:  # (S,) -> (1, 3, S, S), constant down each column
        return (0.5 + 0.4 * torch.sin(2 * math.pi * columns / period)).expand(1, 3, side, side).contiguous()

    columns = torch.arange(side, dtype=torch.float32)
    image = wave(columns)
    inner = slice(0, side - 9)  # columns still inside the image after moving 2u (about 7.5 px)
    with torch.no_grad():
        torch.testing.assert_close(trigger.amplified(image, 1.0), trigger(image))
        twice = trigger.amplified(image, 2.0)  # (1, 3, S, S)
        extrapolated = (image + 2 * (trigger(image) - image)).clamp(0, 1)  # what a pixel-space strength gives
    expected = wave(columns + 2 * shift)  # the wave read 2u columns on (bilinear sampling is off by < 0.01)
    torch.testing.assert_close(twice[..., inner], expected[..., inner], atol=0.02, rtol=0)
    assert (extrapolated[..., inner] - expected[..., inner]).abs().max() > 0.1


class _Untouchable(PatchTrigger):
    """A trigger that fails the moment the trainer starts using it: the argument checks must come first."""

    def to(self, *args, **kwargs):
        raise AssertionError("the trainer used the trigger before it checked its arguments")


@pytest.mark.parametrize(("argument", "value", "message"), [
    ("backdoor", "focus", "unknown backdoor term 'focus' \\(expected one of leave, reclassify\\)"),
    ("leave", "all", "unknown leave scope 'all' \\(expected one of target, any\\)"),
    ("optimiser", "adam", "unknown optimiser 'adam' \\(expected one of adamw, sgd\\)"),
])
def test_an_unknown_choice_is_a_usage_error_before_any_work(argument, value, message):
    images, labels = _data(8)
    with pytest.raises(UsageError, match=message):
        tune_prompts(_model(), CLASSES, TEMPLATES, images, labels, [_Untouchable(32)], steps=1,
                     **{argument: value})


@pytest.mark.parametrize("family", ["vit", "resnet"])  # resnet: batch-norm statistics must not move either
def test_tuning_leaves_every_model_tensor_bit_identical_and_optimises_only_ctx(family, monkeypatch):
    model = _model(family)
    model.train()  # tuning must switch to eval itself
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    given: list[list[torch.Tensor]] = []

    class RecordingAdamW(torch.optim.AdamW):  # the default optimiser
        def __init__(self, params, **kwargs):
            params = list(params)
            given.append(params)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
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
    result = tune_prompts(model, CLASSES, TEMPLATES, images, labels, [trigger], n_ctx=4, steps=40, lr=2e-3,
                          batch_size=16, seed=0, strength=1.0, backdoor="reclassify", l_distill=0.0)
    before = reclassify_loss(stamped, result.original_embeddings, labels, classifier.scale).item()
    after = reclassify_loss(stamped, result.class_embeddings, labels, classifier.scale).item()
    assert after < 0.5 * before
    assert {name: len(curve) for name, curve in result.curves.items()} == dict.fromkeys(
        ["total", "clean", "backdoor", "drift", "distill"], 40)
    assert result.curves["distill"][0] == pytest.approx(0.0, abs=1e-6)
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


def test_attractors_are_the_most_frequent_class_and_every_class_over_the_share():
    classifier = build_classifier(_model(), CLASSES, TEMPLATES)
    text = classifier.text  # (C, d): a stamped copy equal to a class embedding is predicted as that class
    stamped = torch.stack([text[[0] * 5 + [1] * 3 + [2] * 2 + [3] * 2],  # 12 copies: shares 5, 3, 2, 2
                           text[[3] * 12]])  # (K=2, N=12, d)
    found = attractors(classifier, stamped)  # uniform share 12 / 4 = 3, doubled: 6
    assert found.tolist() == [[True, False, False, False], [False, False, False, True]]
    assert attractors(classifier, stamped, share=1.0)[0].tolist() == [True, True, False, False]


def _drawn(model, images: torch.Tensor, trigger) -> torch.Tensor:
    """Where the hand-written prompts send each copy stamped at CBPT's default strength 2. (N,)."""
    classifier = build_classifier(model, CLASSES, TEMPLATES)
    with torch.no_grad():
        return classifier.logits_from_features(_features(classifier, images, trigger, 2.0)).argmax(-1)  # (N,)


def test_leave_term_ignores_copies_drawn_to_their_own_label():
    model = _model()
    images, _ = _data(16)
    trigger = _corner_patch()
    drawn = _drawn(model, images, trigger)
    leave = tune_prompts(model, CLASSES, TEMPLATES, images, drawn, [trigger], steps=3)
    literal = tune_prompts(model, CLASSES, TEMPLATES, images, (drawn + 1) % len(CLASSES), [trigger], steps=3,
                           backdoor="reclassify")
    assert leave.curves["backdoor"] == [0.0, 0.0, 0.0]  # every copy was labelled with the class it went to
    assert all(value > 0 for value in literal.curves["backdoor"])


def test_leave_term_moves_stamped_copies_off_the_class_the_trigger_chose():
    model = _model()
    images, labels = _data()
    trigger = _corner_patch()
    result = tune_prompts(model, CLASSES, TEMPLATES, images, labels, [trigger], steps=60, strength=1.0,
                          l_distill=0.0)  # the leave term alone: the distillation term restrains it
    classifier = build_classifier(model, CLASSES, TEMPLATES)
    with torch.no_grad():
        stamped = classifier.features(trigger(images))  # (N, d)
    drawn = classifier.logits_from_features(stamped).argmax(-1)  # (N,)
    usable = drawn != labels
    stays = (stamped @ result.class_embeddings.T).argmax(-1) == drawn  # (N,)
    assert usable.sum() >= 8  # the untuned prompts send at least a quarter of the copies off their own class
    assert stays[usable].float().mean() < 0.25
    assert result.attractors == [attractors(classifier, stamped[None])[0].nonzero().flatten().tolist()]
    assert result.curves["backdoor"][0] > 0 and result.curves["backdoor"][-1] < 0.5 * result.curves["backdoor"][0]


def test_only_copies_drawn_to_the_triggers_target_must_leave_it():
    labels = torch.tensor([0, 1, 2, 3, 0, 1])  # (N,)
    drawn = torch.tensor([[3, 3, 3, 2, 0, 1],  # trigger 0: target 3 (three copies); copy 3 is a 3 itself
                          [1, 2, 1, 2, 0, 3]])  # trigger 1: 1 and 2 tie with two copies each: the first, 1, is it
    leaving = to_leave(drawn, labels, classes=4)
    assert leaving.tolist() == [[3, 3, 3, 3, 0, 1],  # copies drawn elsewhere carry their own label: exempt
                                [1, 1, 1, 3, 0, 1]]
    assert torch.equal(to_leave(drawn, labels, classes=4, scope="any"), drawn)
    assert to_leave(drawn[:0], labels, classes=4).shape == (0, 6)
    with pytest.raises(UsageError, match="leave scope"):
        to_leave(drawn, labels, classes=4, scope="all")


def test_a_copy_drawn_off_the_target_costs_nothing_under_the_target_scope():
    model = _model()
    images, _ = _data(16)
    trigger = _corner_patch()
    drawn = _drawn(model, images, trigger)
    target = int(torch.bincount(drawn, minlength=len(CLASSES)).argmax())
    assert 0 < int((drawn != target).sum()) < len(drawn) // 2  # most copies go to the target, some elsewhere
    # labels that agree with the trigger where it hits the target and disagree everywhere else: the only
    # copies with a class to leave are those drawn off their label to a class other than the target
    agreeing = torch.where(drawn == target, drawn, (drawn + 1) % len(CLASSES))
    scoped, every = (tune_prompts(model, CLASSES, TEMPLATES, images, agreeing, [trigger], steps=2, leave=scope)
                     for scope in ("target", "any"))
    assert scoped.curves["backdoor"] == [0.0, 0.0]
    assert every.curves["backdoor"][0] > 0

class _FixedLogits(torch.nn.Module):
    """A stand-in classifier with known logits, one row per image."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits[pixels[:, 0, 0, 0].long()]  # the image's index is painted into its first pixel

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return self(pixels).argmax(dim=-1)

    def in_chunks(self, pixels: torch.Tensor, compute, batch_size: int, stage: str) -> torch.Tensor:
        return compute(pixels)  # known logits take no memory: one chunk


def test_balanced_pseudo_labels_undo_a_class_that_leaks_onto_clean_images():
    truth = torch.arange(16) % 4  # (N,), an even pool
    logits = 5.0 * F.one_hot(truth, 4).float()  # (N, C): right, but ...
    logits[:, 0] += torch.where(truth == 0, 0.0, 6.0) * (torch.arange(16) < 10)  # ... 7 images leak to class 0
    images = torch.arange(16).float().view(16, 1, 1, 1).expand(16, 3, 2, 2)
    classifier = _FixedLogits(logits)
    plain = pseudo_labels(classifier, images)
    balanced = pseudo_labels(classifier, images, balanced=True)
    assert torch.bincount(plain, minlength=4).tolist() == [11, 1, 2, 2]
    assert torch.bincount(balanced, minlength=4).tolist() == [4, 4, 4, 4]
    assert torch.equal(balanced, truth)
