"""The full fine-tuning baseline of the purification benchmark (METHOD.md section 8).

The defender fine-tunes *every* weight of the checkpoint on the same few-shot
images CBPT sees, with the loss a classifier built from the checkpoint
naturally has: cross-entropy of the zero-shot logits, where the class side is
the text tower run on the hand-written prompts (so both towers train). This is
the "just fine-tune it on clean data" defence that BackdoorBench and the RVPT
paper compare against; it needs no trigger and no detection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cbpt_guard.classifier import context_length_of, preprocess_of, tokenizer


@dataclass(frozen=True)
class FinetuneSettings:
    """The knobs of the baseline; recorded in the benchmark's results."""

    steps: int = 200
    lr: float = 1e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup: int = 10
    seed: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _lr_at(step: int, settings: FinetuneSettings) -> float:
    """Linear warm-up, then cosine decay to zero (the schedule the zoo itself was fine-tuned with)."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def full_finetune(model: torch.nn.Module, classes: Sequence[str], templates: Sequence[str], images: torch.Tensor,
                  labels: torch.Tensor, settings: FinetuneSettings = FinetuneSettings()
                  ) -> tuple[torch.nn.Module, dict]:
    """Fine-tune ``model`` in place (all weights, AdamW); returns it with its loss curve and seconds.

    ``images`` are pixels in [0, 1] (N, 3, S, S), ``labels`` (N,) index
    ``classes``. Each step recomputes the class embeddings from the prompt
    tokens (averaged over ``templates``) so the text tower learns with the
    image tower; the logit scale learns too and is clamped as in CLIP training.
    In place, not on a copy, so that the baseline's measured memory holds no
    second model that a defender would not need.
    """
    started = time.perf_counter()
    tuned = model.train().requires_grad_(True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in preprocess_of(tuned))
    tokenize = tokenizer(context_length_of(tuned))
    tokens = tokenize([t.format(name) for name in classes for t in templates])  # (C * T, ctx), class-major
    optimiser = torch.optim.AdamW(tuned.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    batch_size = min(settings.batch_size, len(images))
    order, losses = torch.empty(0, dtype=torch.long), []
    for step in range(settings.steps):
        if len(order) < batch_size:
            order = torch.randperm(len(images), generator=generator)
        index, order = order[:batch_size], order[batch_size:]  # (B,)
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step, settings)
        image = F.normalize(tuned.encode_image((images[index] - mean) / std), dim=-1)  # (B, d)
        text = F.normalize(tuned.encode_text(tokens), dim=-1)  # (C * T, d)
        text = F.normalize(text.view(len(classes), len(templates), -1).mean(dim=1), dim=-1)  # (C, d)
        logits = tuned.logit_scale.exp() * image @ text.T  # (B, C)
        loss = F.cross_entropy(logits, labels[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            tuned.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
    tuned.eval().requires_grad_(False)
    return tuned, {"losses": losses, "seconds": time.perf_counter() - started}
