"""The zero-shot classifier every stage looks through: pixels in [0, 1] -> class logits.

Detection inverts triggers through it, purification replaces its class
embeddings, the zoo measures CA and ASR with it, and export traces it. Images
are always handled in pixel space [0, 1] and normalised here with the model's
own mean and std, so triggers are stamped exactly where an attacker stamps them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cbpt_guard.chunking import Chunker, bounds, images_at_once
from cbpt_guard.device import autocast, device_of


@functools.lru_cache(maxsize=4)
def tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer for ``context_length`` (cached: building it reads the vocabulary)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def context_length_of(model: torch.nn.Module) -> int:
    """The text context length of an open_clip CLIP or CustomTextCLIP."""
    return int(getattr(getattr(model, "text", model), "context_length"))


def preprocess_of(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model was trained with, as open_clip records them on the vision tower."""
    visual = model.visual
    return tuple(visual.image_mean), tuple(visual.image_std)


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Unit class embeddings from hand-written prompts, averaged over templates. Returns (C, d) on the model's device.

    Always float32, also on a GPU: these embeddings are the classifier that is
    judged and exported, so they are not rounded to the encoders' autocast dtype.
    """
    tokenize = tokenizer(context_length_of(model))
    device = device_of(model)
    rows = []
    for name in classes:
        with torch.device("cpu"):  # the tokenizer's tensors are CPU data, moved like any other input
            tokens = tokenize([template.format(name) for template in templates])  # (T, ctx)
        tokens = tokens.to(device)
        features = F.normalize(model.encode_text(tokens), dim=-1)  # (T, d)
        rows.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(rows)  # (C, d)


class ZeroShotClassifier(torch.nn.Module):
    """image -> f_I -> normalise -> product with the class embeddings -> logit scale -> logits.

    The model is frozen; gradients flow to the input pixels (for trigger
    inversion) but never into a weight. The classifier lives on the model's
    device (its buffers are made there), and every stage that is handed it
    makes its own tensors on :attr:`device`.
    """

    def __init__(self, model: torch.nn.Module, text_embeddings: torch.Tensor):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        device = device_of(model)
        mean, std = preprocess_of(model)
        self.register_buffer("mean", torch.tensor(mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, device=device).view(1, 3, 1, 1), persistent=False)
        text = F.normalize(text_embeddings.detach().to(device).float(), dim=-1)  # (C, d)
        self.register_buffer("text", text, persistent=False)
        self.register_buffer("scale", model.logit_scale.detach().exp().reshape(()), persistent=False)

    @property
    def image_size(self) -> int:
        """Side of the square input the vision tower expects."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        """Where the model, and so every tensor a stage makes for this classifier, lives."""
        return self.scale.device

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit image features of pixels in [0, 1]. (N, 3, H, W) -> (N, d), float32.

        On a GPU the encoder runs under autocast (:mod:`cbpt_guard.device`);
        its output is cast back to float32 before it is normalised.
        """
        with autocast(self.device):
            encoded = self.model.encode_image((pixels - self.mean) / self.std)  # (N, d)
        return F.normalize(encoded.float(), dim=-1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(N, d) unit features -> (N, C) logits."""
        return self.scale * features @ self.text.T

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C) logits."""
        return self.logits_from_features(self.features(pixels))

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Top-1 class index per image, in batches of at most ``batch_size`` that fit. (N, 3, H, W) -> (N,)."""
        return self.in_chunks(pixels, lambda chunk: self(chunk).argmax(dim=-1), batch_size, "prediction")

    @torch.no_grad()
    def in_chunks(self, pixels: torch.Tensor, compute, batch_size: int, stage: str) -> torch.Tensor:
        """``compute`` over ``pixels`` (N, ...) in chunks of at most ``batch_size`` that fit in memory, concatenated.

        See :mod:`cbpt_guard.chunking`: a chunk never exceeds ``batch_size``, so
        when everything fits the batches are those of an unchunked loop.
        """
        chunker = Chunker(images_at_once(self, min(batch_size, max(len(pixels), 1)), grad=False), stage)
        return chunker.run(lambda size: torch.cat([compute(pixels[start:end])
                                                   for start, end in bounds(len(pixels), size)]))


def build_classifier(model: torch.nn.Module, classes: Sequence[str], templates: Sequence[str]) -> ZeroShotClassifier:
    """The hand-written-prompt zero-shot classifier of ``model`` over ``classes``."""
    return ZeroShotClassifier(model, class_embeddings(model, classes, templates))
