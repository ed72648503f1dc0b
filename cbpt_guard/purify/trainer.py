"""Class-wise backdoor prompt tuning: learn class prompts that classify stamped images correctly.

The encoders are frozen and the dummy triggers fixed, so the unit image
features of every clean view and every stamped view are computed once, up
front; each step then only runs the text tower on the class prompts. Only the
prompt learner's ``ctx`` is given to the optimiser; the model's weights are
bit-identical afterwards (the tests check it).
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


@torch.no_grad()
def pseudo_labels(classifier: ZeroShotClassifier, images: torch.Tensor) -> torch.Tensor:
    """The classifier's own top-1 predictions on *clean* images, as labels for the zero-shot tiers. (N,).

    A backdoored model keeps its clean accuracy (that is what makes the attack
    stealthy, METHOD.md sections 1 and 2), so its predictions on clean probes
    are mostly right; the same label then serves the clean view and the
    stamped view of each probe.
    """
    return classifier.predict(images)


@torch.no_grad()
def _features(classifier: ZeroShotClassifier, images: torch.Tensor, trigger: Trigger | None,
              batch_size: int = 256) -> torch.Tensor:
    """Unit image features of ``images`` (stamped by ``trigger`` if given). (N, 3, S, S) -> (N, d)."""
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
                 n_ctx: int = 4, steps: int = 200, lr: float = 2e-3, l_bd: float = 1.0, l_drift: float = 1.0,
                 batch_size: int = 32, seed: int = 0, optimiser: str = "sgd") -> TuningResult:
    """CBPT on pixels ``images`` in [0, 1] (N, 3, S, S) with (pseudo-)labels (N,) and frozen dummy ``triggers``.

    Each batch pairs every clean image with its copy stamped by each trigger,
    all under the clean label. ``triggers`` may be empty (plain prompt tuning,
    the baseline). The model is put in eval mode with gradients off.
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

    learner = ClassPromptLearner(model, classnames, n_ctx=n_ctx, seed=seed).to(device)
    encoder = EmbeddingTextEncoder(model)
    optimizer = _optimiser(learner.ctx, optimiser, lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(images))
    curves: dict[str, list[float]] = {"total": [], "clean": [], "backdoor": [], "drift": []}
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # a fresh permutation per epoch
            order = torch.randperm(len(images), generator=generator)
        index, order = order[:batch_size].to(device), order[batch_size:]  # (B,)
        text = learner.class_embeddings(encoder)  # (C, d)
        loss, parts = total_loss(
            clean[index],  # (B, d)
            stamped[:, index].flatten(0, 1),  # (K * B, d), trigger-major
            text, original, labels[index],
            labels[index].repeat(len(frozen)),  # (K * B,), the clean labels once per trigger
            classifier.scale, l_bd, l_drift)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for name, value in parts.items():
            curves[name].append(value)
    with torch.no_grad():
        tuned = learner.class_embeddings(encoder)  # (C, d)
    return TuningResult(ctx=learner.ctx.detach().clone(), class_embeddings=tuned, original_embeddings=original,
                        curves=curves, seconds=time.perf_counter() - started)
