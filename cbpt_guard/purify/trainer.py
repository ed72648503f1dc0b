"""Class-wise backdoor prompt tuning: learn class prompts under which a trigger no longer chooses the class.

The encoders are frozen and the dummy triggers fixed, so the unit image
features of every clean view and every stamped view are computed once, up
front; each step then only runs the text tower on the class prompts (and the
whole few-shot set fits in one batch, as the image side is a matrix product).
Only the prompt learner's ``ctx`` is given to the optimiser; the model's
weights are bit-identical afterwards (the tests check it).

The defaults of the policy's keys (context length, steps, learning rate, loss
weights, margin) are the policy schema's (:class:`~cbpt_guard.policy.schema.PurificationSettings`),
which are what benchmarks/purification.py measured on the model zoo.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cbpt_guard.classifier import ZeroShotClassifier, class_embeddings
from cbpt_guard.errors import UsageError
from cbpt_guard.policy.schema import PurificationSettings
from cbpt_guard.progress import Meter, Progress
from cbpt_guard.purify import losses
from cbpt_guard.purify.prompt_learner import ClassPromptLearner
from cbpt_guard.purify.text_encoder import EmbeddingTextEncoder
from cbpt_guard.triggers import Trigger


@dataclass
class TuningResult:
    """What prompt tuning produced: the learned context, the tuned classifier's text side, the curves."""

    ctx: torch.Tensor  # (n_cls, n_ctx, width)
    class_embeddings: torch.Tensor  # (n_cls, d), unit
    original_embeddings: torch.Tensor  # (n_cls, d), unit: the hand-written prompts
    curves: dict[str, list[float]] = field(default_factory=dict)  # total, clean, backdoor, drift, distill per step
    seconds: float = 0.0
    attractors: list[list[int]] = field(default_factory=list)
    """Per trigger, the classes it draws stamped images to under the hand-written prompts (see :func:`attractors`)."""


TRIGGER_STRENGTH = 2.0
"""How much stronger than inverted the dummy stamps are (:meth:`~cbpt_guard.triggers.Trigger.amplified`).
Stronger stamps leave a lower real-trigger ASR for a little clean accuracy: benchmarks/PURIFICATION.md, "Dummy
stamps" (written by benchmarks/purification.py), measures strength 2 against 1; a development sweep at 1.5 and 3
landed between the two."""
BACKDOOR_TERMS = ("leave", "reclassify")
LEAVE_SCOPES = ("target", "any")
OPTIMISERS = ("adamw", "sgd")
ATTRACTOR_SHARE = 2.0
"""A class is a trigger's attractor when it gets at least this many times the uniform share of the stamped images."""
SINKHORN_ITERATIONS = 50
_POLICY = PurificationSettings()
"""The policy schema's purification defaults: the source of this module's defaults for the policy's keys."""


@torch.no_grad()
def pseudo_labels(classifier: ZeroShotClassifier, images: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """The classifier's own predictions on *clean* images, as labels for the zero-shot tiers. (N,).

    A backdoored model keeps its clean accuracy (that is what makes the attack
    stealthy, METHOD.md sections 1 and 2), so its predictions on clean probes
    are mostly right; the same label then serves the clean view and the
    stamped view of each probe.

    Some backdoors leak: the model sends a share of *clean* images to the
    target too (measured on the zoo's WaNet and SSBA-like models: 24-36% of
    unlabelled images predicted as the target), and plain pseudo-labels then
    teach that leak. ``balanced`` assigns labels under the constraint that
    every class gets an equal share of the images (Sinkhorn-Knopp on the
    softmax, then the top class per image): right when the unlabelled pool
    covers the classes about evenly, wrong when it does not.
    """
    if not balanced:
        return classifier.predict(images)
    logits = classifier.in_chunks(images, classifier, 512, "pseudo-labels")  # (N, C)
    plan = torch.softmax(logits - logits.max(dim=1, keepdim=True).values, dim=1)  # (N, C)
    for _ in range(SINKHORN_ITERATIONS):  # alternate: every class a 1/C share, every image a 1/N share
        plan = plan / plan.sum(dim=0, keepdim=True).clamp_min(1e-12) / plan.shape[1]
        plan = plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-12) / plan.shape[0]
    return plan.argmax(dim=1)  # (N,)


@torch.no_grad()
def attractors(classifier: ZeroShotClassifier, stamped: torch.Tensor, share: float = ATTRACTOR_SHARE) -> torch.Tensor:
    """Per trigger, the classes its stamped images are drawn to. Unit features (K, N, d) -> (K, C) bool.

    A class attracts when it receives at least ``share`` times the uniform
    share N / C of the stamped images; the most frequent class always does.
    For an inverted backdoor trigger the attacker's target is among them
    (detection names the target the same way, from stamped probes); an
    imperfect inversion also draws images to the small model's universal
    attractors (a texture class, say), which are listed too. Reported with
    the tuning result, so a reader sees what each dummy trigger worked against.
    """
    count, size = stamped.shape[:2]
    classes = classifier.text.shape[0]
    if count == 0:
        return torch.zeros(0, classes, dtype=torch.bool, device=stamped.device)
    predictions = classifier.logits_from_features(stamped.flatten(0, 1)).argmax(dim=-1).view(count, size)  # (K, N)
    histogram = _class_counts(predictions, classes)  # (K, C)
    found = histogram >= share * size / classes  # (K, C)
    found[torch.arange(count, device=found.device), histogram.argmax(dim=1)] = True
    return found


def _class_counts(predictions: torch.Tensor, classes: int) -> torch.Tensor:
    """How many of each row's predictions fall on each class. (K, N) int64 -> (K, C)."""
    histogram = torch.zeros(predictions.shape[0], classes, dtype=torch.long, device=predictions.device)
    return histogram.scatter_add_(1, predictions, torch.ones_like(predictions))  # (K, C)


def to_leave(drawn: torch.Tensor, labels: torch.Tensor, classes: int, scope: str = "target") -> torch.Tensor:
    """The class each stamped copy must leave, or its own label where it has none to leave. (K, N) -> (K, N).

    ``drawn`` is where the hand-written prompts send each copy of each
    trigger. Scope "any" asks every copy to leave its drawn class. Scope
    "target" (the default) asks it only of the copies drawn to the trigger's
    *target*, the class most of its copies go to (how detection names a
    backdoor's target, and the first of :func:`attractors`): an imperfect
    inversion also scatters copies over the small model's universal attractors
    (a texture class, a digit), and pushing those classes away too cost clean
    accuracy where few clean images hold them in place, for about the same
    real-trigger ASR: benchmarks/PURIFICATION.md, "Which stamped copies must
    leave" (written by benchmarks/purification.py), measures the two scopes;
    with 4 shots the clean-accuracy gap was wider in development.
    """
    _check_choice("leave scope", scope, LEAVE_SCOPES)
    if scope == "any":
        return drawn
    if drawn.shape[0] == 0:
        return drawn
    target = _class_counts(drawn, classes).argmax(dim=1)  # (K,), the first class on a tie
    return torch.where(drawn == target[:, None], drawn, labels[None])  # (K, N)


@torch.no_grad()
def _features(classifier: ZeroShotClassifier, images: torch.Tensor, trigger: Trigger | None,
              strength: float = 1.0, batch_size: int = 64) -> torch.Tensor:
    """Unit image features of ``images``, stamped by ``trigger`` at ``strength`` if given. (N, 3, S, S) -> (N, d).

    The stamp is :meth:`~cbpt_guard.triggers.Trigger.amplified`: a patch
    with a more opaque mask, an additive trigger with a larger amplitude, a
    warp with a larger flow. Why: detection returns the *smallest* trigger
    that collapses features, while the attacker's trigger, planted to work
    every time, is stronger; prompts tuned against the minimal one alone left
    the stronger real one working (see :data:`TRIGGER_STRENGTH`).

    Batches of 64: on the zoo's ViT (32 px, CPU) 64 images at a time took
    0.18 s for the 352 few-shot images against 0.20 s at 32 and 0.21 s at 128,
    with the peak memory of one small batch of activations. Fewer where 64 do
    not fit the free memory (:mod:`cbpt_guard.chunking`).
    """

    def features(pixels: torch.Tensor) -> torch.Tensor:  # (b, 3, S, S) -> (b, d)
        return classifier.features(pixels if trigger is None else trigger.amplified(pixels, strength))

    return classifier.in_chunks(images, features, batch_size, "purification: feature cache")  # (N, d)


def _check_inputs(classnames: Sequence[str], images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise UsageError(f"images must be a non-empty (N, 3, S, S) batch, got shape {tuple(images.shape)}")
    if labels.shape != (len(images),) or labels.dtype != torch.long:
        raise UsageError(f"labels must be int64 of shape ({len(images)},), got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= len(classnames):
        raise UsageError(f"labels must lie in [0, {len(classnames)}) for the {len(classnames)} classes")


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")


def _optimiser(parameter: torch.nn.Parameter, kind: str, lr: float) -> torch.optim.Optimizer:
    """The optimiser of the prompt context; ``kind`` is one of :data:`OPTIMISERS`, checked by the caller."""
    if kind == "sgd":
        return torch.optim.SGD([parameter], lr=lr, momentum=0.9)
    # No weight decay: the drift loss, not a pull toward zero, keeps ctx near its start.
    return torch.optim.AdamW([parameter], lr=lr, weight_decay=0.0)


def tune_prompts(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str],
                 images: torch.Tensor, labels: torch.Tensor, triggers: Sequence[Trigger], *,
                 n_ctx: int = _POLICY.n_ctx, steps: int = _POLICY.steps, lr: float = _POLICY.lr,
                 l_bd: float = _POLICY.loss_weights.l_bd, l_drift: float = _POLICY.loss_weights.l_drift,
                 l_distill: float = _POLICY.loss_weights.l_distill, margin: float = _POLICY.margin,
                 leave: str = "target",
                 strength: float = TRIGGER_STRENGTH, backdoor: str = "leave", batch_size: int | None = None,
                 seed: int = 0, optimiser: str = "adamw", progress: Progress | None = None) -> TuningResult:
    """CBPT on pixels ``images`` in [0, 1] (N, 3, S, S) with (pseudo-)labels (N,) and frozen dummy ``triggers``.

    Each batch pairs every clean image with its copy stamped by each trigger
    (at ``strength``, see :func:`_features`), all under the clean label;
    ``batch_size`` None puts the whole set in every batch. ``triggers`` may be
    empty (plain prompt tuning, the baseline). The model is put in eval mode
    with gradients off.

    The loss is ``clean + l_bd * backdoor + l_drift * drift + l_distill * distill``.
    ``backdoor`` "leave" (the default, :func:`~cbpt_guard.purify.losses.leave_loss`)
    asks each stamped copy to leave the class the hand-written prompts give it,
    by ``margin`` logits, for the copies ``leave`` names (:func:`to_leave`);
    "reclassify" is METHOD.md section 5 to the letter (cross-entropy toward the
    clean label), kept for comparison. The distillation term
    (:func:`~cbpt_guard.purify.losses.distill_loss`) holds the clean
    predictions of the hand-written prompts. What the defaults and
    "reclassify" leave on the zoo is measured by benchmarks/purification.py
    (benchmarks/PURIFICATION.md, "The backdoor term").
    ``progress`` hears about the steps as the stage "purification: prompt tuning".
    """
    started = time.perf_counter()
    _check_inputs(classnames, images, labels)  # every argument checked before any feature is computed
    _check_choice("backdoor term", backdoor, BACKDOOR_TERMS)
    _check_choice("leave scope", leave, LEAVE_SCOPES)
    _check_choice("optimiser", optimiser, OPTIMISERS)
    original = class_embeddings(model, classnames, templates)  # (C, d)
    classifier = ZeroShotClassifier(model, original)  # freezes the model: eval, no weight gradients
    device = classifier.scale.device
    images, labels = images.to(device), labels.to(device)
    frozen = [trigger.to(device).eval().requires_grad_(False) for trigger in triggers]
    clean = _features(classifier, images, None)  # (N, d)
    stamped = (torch.stack([_features(classifier, images, trigger, strength) for trigger in frozen]) if frozen
               else clean.new_zeros((0, *clean.shape)))  # (K, N, d)
    with torch.no_grad():  # the class each stamped copy must leave (its own label where it has none to leave)
        leaving = to_leave(classifier.logits_from_features(stamped).argmax(dim=-1), labels, len(classnames),
                           leave)  # (K, N)

    learner = ClassPromptLearner(model, classnames, n_ctx=n_ctx, seed=seed).to(device)
    encoder = EmbeddingTextEncoder(model)
    optimizer = _optimiser(learner.ctx, optimiser, lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(images) if batch_size is None else min(batch_size, len(images))
    curves: dict[str, list[float]] = {name: [] for name in ("total", "clean", "backdoor", "drift", "distill")}
    order = torch.empty(0, dtype=torch.long, device="cpu")  # batch orders: drawn on the CPU, then moved
    meter = Meter(progress, "purification: prompt tuning", steps)
    for step in range(1, steps + 1):
        if len(order) < batch_size:  # a fresh permutation per epoch
            order = torch.randperm(len(images), generator=generator, device="cpu")
        index, order = order[:batch_size].to(device), order[batch_size:]  # (B,)
        text = learner.class_embeddings(encoder)  # (C, d)
        views = stamped[:, index].flatten(0, 1)  # (K * B, d), trigger-major
        view_labels = labels[index].repeat(len(frozen))  # (K * B,), the clean labels once per trigger
        if backdoor == "leave":
            backdoor_term = losses.leave_loss(views, text, leaving[:, index].flatten(), view_labels, classifier.scale,
                                            margin)
        else:
            backdoor_term = losses.reclassify_loss(views, text, view_labels, classifier.scale)
        parts = {
            "clean": losses.clean_loss(clean[index], text, labels[index], classifier.scale),
            "backdoor": backdoor_term,
            "drift": losses.drift_loss(text, original),
            "distill": losses.distill_loss(clean[index], text, original, classifier.scale),
        }
        loss = parts["clean"] + l_bd * parts["backdoor"] + l_drift * parts["drift"] + l_distill * parts["distill"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        curves["total"].append(loss.item())
        for name, value in parts.items():
            curves[name].append(value.item())
        meter.advance(step)
    with torch.no_grad():
        tuned = learner.class_embeddings(encoder)  # (C, d)
    return TuningResult(ctx=learner.ctx.detach().clone(), class_embeddings=tuned, original_embeddings=original,
                        curves=curves, seconds=time.perf_counter() - started,
                        attractors=[row.nonzero().flatten().tolist() for row in attractors(classifier, stamped)])
