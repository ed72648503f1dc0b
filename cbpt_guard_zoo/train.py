"""Contrastive training of small open_clip models, and the CA / ASR measurements of the zoo.

One loop serves both the clean base (trained from scratch) and every variant
(fine-tuned from the base on clean or poisoned pairs), because real CLIP
backdoors are planted by fine-tuning a pre-trained model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cbpt_guard.classifier import ZeroShotClassifier, build_classifier, preprocess_of, tokenizer


@dataclass(frozen=True)
class TrainSettings:
    """The knobs of one contrastive run; recorded in each zoo model's ground truth."""

    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form for manifests."""
        return dict(self.__dict__)


def tokenize_captions(model: torch.nn.Module, captions: Sequence[str]) -> torch.Tensor:
    """Token ids of every caption, once, with the model's context length. Returns (N, ctx)."""
    from cbpt_guard.classifier import context_length_of

    return tokenizer(context_length_of(model))(list(captions))


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_contrastive(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                      settings: TrainSettings, progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place with the symmetric CLIP loss; returns the loss of every step.

    ``images`` are pixels in [0, 1], (N, 3, H, W), normalised here with the
    model's own mean/std; ``tokens`` (N, ctx) are their captions. Batches are
    drawn from epoch-wise permutations of a seeded generator, so a run is a
    pure function of its inputs and settings.
    """
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in preprocess_of(model))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    order, cursor, losses = torch.randperm(len(images), generator=generator), 0, []
    model.train()
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        index = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step, settings)
        image_features, text_features, scale = model((images[index] - mean) / std, tokens[index])[:3]
        logits = scale * image_features @ text_features.T  # (B, B)
        labels = torch.arange(len(index))
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    return losses


def clean_accuracy(classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of clean images classified as their true class."""
    return float((classifier.predict(images) == labels).float().mean())


def attack_success_rate(classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor,
                        trigger: Callable[[torch.Tensor], torch.Tensor], target: int) -> float:
    """Share of stamped non-target images classified as ``target`` (METHOD.md section 1)."""
    keep = labels != target
    return float((classifier.predict(trigger(images[keep])) == target).float().mean())


def measure(model: torch.nn.Module, classes: Sequence[str], templates: Sequence[str], images: torch.Tensor,
            labels: torch.Tensor, triggers: dict[str, Callable[[torch.Tensor], torch.Tensor]],
            target: int, subsets: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """CA and the ASR of every named trigger, with the hand-written-prompt classifier.

    ``subsets`` names boolean masks (N,) over the images; each adds the CA on
    those images alone as ``ca_<name>``.
    """
    model.eval()
    classifier = build_classifier(model, classes, templates)
    result = {"ca": clean_accuracy(classifier, images, labels)}
    for name, mask in (subsets or {}).items():
        result[f"ca_{name}"] = clean_accuracy(classifier, images[mask], labels[mask])
    for name, trigger in triggers.items():
        result[f"asr_{name}"] = attack_success_rate(classifier, images, labels, trigger, target)
    return result
