"""The three CBPT losses (METHOD.md section 5), as pure functions over tensors.

All features are unit vectors: image features (N, d), class text features (C, d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clean_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
               logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy of the clean images' zero-shot logits against their (pseudo-)labels. Scalar."""
    logits = logit_scale * image_features @ text_features.T  # (N, C)
    return F.cross_entropy(logits, labels)


def backdoor_loss(stamped_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                  logit_scale: torch.Tensor | float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of stamped images against the *clean* image's label. Scalar.

    The region of feature space a trigger reaches must be classified as what
    the image shows; this term is what purifies (plain prompt tuning does not).
    ``labels`` repeat the clean labels once per stamped copy. ``weights`` (N,)
    weigh each copy's cross-entropy; the sum is still divided by N, so a copy
    weighted 0 lowers the term instead of leaving it to the others (the
    trainer's focus on copies a trigger still flips, see
    :func:`cbpt_guard.purify.trainer.tune_prompts`). With no stamped images
    (no trigger: the plain prompt-tuning baseline) the term is zero.
    """
    if stamped_features.shape[0] == 0:
        return stamped_features.new_zeros(())
    if weights is None:
        return clean_loss(stamped_features, text_features, labels, logit_scale)
    logits = logit_scale * stamped_features @ text_features.T  # (N, C)
    return (weights * F.cross_entropy(logits, labels, reduction="none")).sum() / len(labels)


def drift_loss(tuned_text: torch.Tensor, original_text: torch.Tensor) -> torch.Tensor:
    """Mean over classes of 1 - cosine(tuned, hand-written) class embedding (KgCoOp-style). Scalar."""
    return (1 - F.cosine_similarity(tuned_text, original_text, dim=-1)).mean()  # mean of (C,)


def total_loss(image_features: torch.Tensor, stamped_features: torch.Tensor, text_features: torch.Tensor,
               original_text: torch.Tensor, labels: torch.Tensor, stamped_labels: torch.Tensor,
               logit_scale: torch.Tensor | float, l_bd: float, l_drift: float,
               stamped_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``clean + l_bd * backdoor + l_drift * drift``; returns the total and each part as floats for loss curves."""
    parts = {
        "clean": clean_loss(image_features, text_features, labels, logit_scale),
        "backdoor": backdoor_loss(stamped_features, text_features, stamped_labels, logit_scale, stamped_weights),
        "drift": drift_loss(text_features, original_text),
    }
    total = parts["clean"] + l_bd * parts["backdoor"] + l_drift * parts["drift"]
    return total, {"total": total.item(), **{name: value.item() for name, value in parts.items()}}
