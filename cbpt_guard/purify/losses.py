"""The CBPT losses (METHOD.md section 5, and the two measured departures from it), as pure functions.

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


def reclassify_loss(stamped_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                    logit_scale: torch.Tensor | float) -> torch.Tensor:
    """METHOD.md's backdoor term: cross-entropy of stamped images against the *clean* image's label. Scalar.

    Kept for comparison (benchmarks/PURIFICATION.md): it asks the prompts to
    read the true class out of a region the trigger has collapsed, and pays
    for it in clean accuracy. Zero with no stamped images.
    """
    if stamped_features.shape[0] == 0:
        return stamped_features.new_zeros(())
    return clean_loss(stamped_features, text_features, labels, logit_scale)


def leave_loss(stamped_features: torch.Tensor, text_features: torch.Tensor, drawn: torch.Tensor,
               labels: torch.Tensor, logit_scale: torch.Tensor | float, margin: float = 0.0) -> torch.Tensor:
    """The default backdoor term: stamped images must leave the class the trigger drew them to, by a margin. Scalar.

    ``drawn`` (N,) is the class the hand-written prompts give each stamped
    copy (for a backdoor trigger, the attacker's target); the term is the mean
    of ``-log(1 - p(drawn))`` over the copies whose drawn class is not their
    own label (where trigger and content agree there is nothing to undo), the
    sum divided by all N copies so that it fades as copies leave. It asks only
    what a backdoor breaks, that the trigger stops *choosing* the class; where
    the copy goes instead is left to the content still in its features.

    ``margin`` is added to the drawn class's logit before the softmax, so a
    copy that has only just crossed the boundary still pays: the dummy
    triggers are weaker stand-ins for the real one, which moves features
    further, and prompts that push the dummies' copies only onto the boundary
    left the real trigger working: benchmarks/PURIFICATION.md ("The leave term's
    margin", "The backdoor term", written by benchmarks/purification.py)
    measures the margin against none and against the cross-entropy term.
    Zero with no copies.
    """
    if stamped_features.shape[0] == 0:
        return stamped_features.new_zeros(())
    logits = logit_scale * stamped_features @ text_features.T  # (N, C)
    logits = logits + margin * F.one_hot(drawn, logits.shape[1]).to(logits.dtype)  # the drawn class handicapped
    probabilities = torch.softmax(logits, dim=-1)  # (N, C)
    stay = probabilities.gather(1, drawn[:, None]).squeeze(1)  # (N,)
    flipped = (drawn != labels).to(stay.dtype)  # (N,)
    return -(flipped * torch.log((1 - stay).clamp_min(1e-6))).sum() / len(labels)


def distill_loss(image_features: torch.Tensor, text_features: torch.Tensor, original_text: torch.Tensor,
                 logit_scale: torch.Tensor | float) -> torch.Tensor:
    """KL(original || tuned) of the clean images' class distributions, batch mean. Scalar.

    The hand-written prompts already classify clean images well (a backdoor
    keeps clean accuracy); sixteen shots per class are too few to improve on
    them and enough to overfit, so this term holds clean predictions where
    they were while the backdoor term moves the trigger's region, at a small
    cost in real-trigger ASR: benchmarks/PURIFICATION.md ("Distillation of the
    clean predictions", written by benchmarks/purification.py) measures the
    default weight against none.
    """
    tuned = F.log_softmax(logit_scale * image_features @ text_features.T, dim=-1)  # (N, C)
    original = F.log_softmax(logit_scale * image_features @ original_text.T, dim=-1)  # (N, C)
    return F.kl_div(tuned, original, log_target=True, reduction="batchmean")


def drift_loss(tuned_text: torch.Tensor, original_text: torch.Tensor) -> torch.Tensor:
    """Mean over classes of 1 - cosine(tuned, hand-written) class embedding (KgCoOp-style). Scalar."""
    return (1 - F.cosine_similarity(tuned_text, original_text, dim=-1)).mean()  # mean of (C,)
