"""Class-wise backdoor prompt tuning: learn class prompts that classify stamped images correctly.

The encoders are frozen and the dummy triggers fixed, so the unit image
features of every clean view and every stamped view are computed once, up
front; each step then only runs the text tower on the class prompts (and the
whole few-shot set fits in one batch, as the image side is a matrix product).
Only the prompt learner's ``ctx`` is given to the optimiser; the model's
weights are bit-identical afterwards (the tests check it).

The defaults are the ones benchmarks/purification.py measured on the model
zoo (benchmarks/PURIFICATION.md); the ready policies carry the same values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cbpt_guard.classifier import ZeroShotClassifier, class_embeddings
from cbpt_guard.errors import UsageError
from cbpt_guard.purify.losses import total_loss
from cbpt_guard.purify.prompt_learner import ClassPromptLearner
from cbpt_guard.purify.text_encoder import EmbeddingTextEncoder
from cbpt_guard.triggers import Trigger


@dataclass
class TuningResult:
    """What prompt tuning produced: the learned context, the tuned classifier's text side, the curves."""

    ctx: torch.Tensor  # (n_cls, n_ctx, width)
    class_embeddings: torch.Tensor  # (n_cls, d), unit
    original_embeddings: torch.Tensor  # (n_cls, d), unit: the hand-written prompts
    curves: dict[str, list[float]] = field(default_factory=dict)  # total, clean, backdoor, drift per step
    seconds: float = 0.0
    attractors: list[list[int]] = field(default_factory=list)
    """Per trigger, the classes it draws stamped images to under the hand-written prompts (see :func:`attractors`)."""


ATTRACTOR_SHARE = 2.0
"""A class is a trigger's attractor when it gets at least this many times the uniform share of the stamped images."""
SINKHORN_ITERATIONS = 50


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
    logits = torch.cat([classifier(images[i : i + 512]) for i in range(0, len(images), 512)])  # (N, C)
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
    attractors (a texture class, say), which are listed too.
    """
    count, size = stamped.shape[:2]
    classes = classifier.text.shape[0]
    if count == 0:
        return torch.zeros(0, classes, dtype=torch.bool, device=stamped.device)
    predictions = classifier.logits_from_features(stamped.flatten(0, 1)).argmax(dim=-1).view(count, size)  # (K, N)
    histogram = torch.zeros(count, classes, dtype=torch.long, device=stamped.device)
    histogram.scatter_add_(1, predictions, torch.ones_like(predictions))  # (K, C)
    found = histogram >= share * size / classes  # (K, C)
    found[torch.arange(count), histogram.argmax(dim=1)] = True
    return found


@torch.no_grad()
def _features(classifier: ZeroShotClassifier, images: torch.Tensor, trigger: Trigger | None,
              batch_size: int = 32) -> torch.Tensor:
    """Unit image features of ``images`` (stamped by ``trigger`` if given). (N, 3, S, S) -> (N, d).

    Small batches: on the zoo's ViT, 32 images at a time ran as fast as 256 on
    a CPU with a quarter of the peak memory (the activations of one batch).
    """
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = images[start : start + batch_size]  # (b, 3, S, S)
        chunks.append(classifier.features(pixels if trigger is None else trigger(pixels)))  # (b, d)
    return torch.cat(chunks)  # (N, d)


def _check_inputs(classnames: Sequence[str], images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise UsageError(f"images must be a non-empty (N, 3, S, S) batch, got shape {tuple(images.shape)}")
    if labels.shape != (len(images),) or labels.dtype != torch.long:
        raise UsageError(f"labels must be int64 of shape ({len(images)},), got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= len(classnames):
        raise UsageError(f"labels must lie in [0, {len(classnames)}) for the {len(classnames)} classes")


def _optimiser(parameter: torch.nn.Parameter, kind: str, lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD([parameter], lr=lr, momentum=0.9)
    if kind == "adamw":  # no weight decay: the drift loss, not a pull toward zero, keeps ctx near its start
        return torch.optim.AdamW([parameter], lr=lr, weight_decay=0.0)
    raise UsageError(f"unknown optimiser {kind!r} (expected 'sgd' or 'adamw')")


def tune_prompts(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str],
                 images: torch.Tensor, labels: torch.Tensor, triggers: Sequence[Trigger], *,
                 n_ctx: int = 4, steps: int = 100, lr: float = 1e-2, l_bd: float = 1.0, l_drift: float = 1.0,
                 batch_size: int | None = None, seed: int = 0, optimiser: str = "adamw",
                 focus: bool = True) -> TuningResult:
    """CBPT on pixels ``images`` in [0, 1] (N, 3, S, S) with (pseudo-)labels (N,) and frozen dummy ``triggers``.

    Each batch pairs every clean image with its copy stamped by each trigger,
    all under the clean label; ``batch_size`` None puts the whole set in every
    batch. ``triggers`` may be empty (plain prompt tuning, the baseline). The
    model is put in eval mode with gradients off.

    ``focus`` (the default) aims the backdoor term at what a backdoor does,
    in two ways; ``focus=False`` is METHOD.md section 5 to the letter (every
    stamped copy, every step), kept for comparison:

    - a stamped copy of an image whose label is one of the trigger's
      :func:`attractors` is left out: there trigger and content agree, so it
      says nothing about the backdoor, and as the one stamped copy labelled
      with the target it would teach the prompts to keep the trigger's region
      inside the target class;
    - of the rest, the term sums the cross-entropy of only the copies the
      current prompts still send to an attractor, divided by the count of all
      of them, so it fades as the backdoor is undone. Copies already
      classified elsewhere are not pulled further toward their true class,
      which a collapsed trigger region cannot give back without costing clean
      accuracy.

    Measured on the zoo (21 backdoored models, 16 shots), focus halved the
    real triggers' mean ASR and raised the mean clean accuracy by about three
    points against the literal term (benchmarks/PURIFICATION.md, "Comparisons").
    """
    started = time.perf_counter()
    _check_inputs(classnames, images, labels)
    original = class_embeddings(model, classnames, templates)  # (C, d)
    classifier = ZeroShotClassifier(model, original)  # freezes the model: eval, no weight gradients
    device = classifier.scale.device
    images, labels = images.to(device), labels.to(device)
    frozen = [trigger.to(device).eval().requires_grad_(False) for trigger in triggers]
    clean = _features(classifier, images, None)  # (N, d)
    stamped = (torch.stack([_features(classifier, images, trigger) for trigger in frozen]) if frozen
               else clean.new_zeros((0, *clean.shape)))  # (K, N, d)
    drawn = attractors(classifier, stamped)  # (K, C)
    if focus:  # (K, N): the copies the backdoor term may use
        usable = ~drawn.gather(1, labels.expand(len(frozen), -1))
    else:
        usable = torch.ones(stamped.shape[:2], dtype=torch.bool, device=device)

    learner = ClassPromptLearner(model, classnames, n_ctx=n_ctx, seed=seed).to(device)
    encoder = EmbeddingTextEncoder(model)
    optimizer = _optimiser(learner.ctx, optimiser, lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(images) if batch_size is None else min(batch_size, len(images))
    curves: dict[str, list[float]] = {"total": [], "clean": [], "backdoor": [], "drift": []}
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # a fresh permutation per epoch
            order = torch.randperm(len(images), generator=generator)
        index, order = order[:batch_size].to(device), order[batch_size:]  # (B,)
        text = learner.class_embeddings(encoder)  # (C, d)
        keep = usable[:, index].flatten()  # (K * B,), trigger-major
        views = stamped[:, index].flatten(0, 1)[keep]  # (M, d)
        view_labels = labels[index].repeat(len(frozen))[keep]  # (M,), the clean labels once per trigger
        weights = None
        if focus:
            with torch.no_grad():  # copies the current prompts still send to one of their trigger's attractors
                trigger_of = torch.arange(len(frozen), device=device).repeat_interleave(len(index))[keep]  # (M,)
                now = (views @ text.detach().T).argmax(dim=-1)  # (M,)
                weights = drawn[trigger_of, now].float()  # (M,)
        loss, parts = total_loss(clean[index], views, text, original, labels[index], view_labels,
                                 classifier.scale, l_bd, l_drift, stamped_weights=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for name, value in parts.items():
            curves[name].append(value)
    with torch.no_grad():
        tuned = learner.class_embeddings(encoder)  # (C, d)
    return TuningResult(ctx=learner.ctx.detach().clone(), class_embeddings=tuned, original_embeddings=original,
                        curves=curves, seconds=time.perf_counter() - started,
                        attractors=[row.nonzero().flatten().tolist() for row in drawn])
