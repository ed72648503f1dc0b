"""open_clip's text path, fed token *embeddings* instead of token ids.

Prompt tuning learns vectors in the token-embedding space, so it needs the text
tower from the point just after ``token_embedding``. This module repeats
open_clip 3.x's ``CLIP.encode_text`` (and ``TextTransformer.forward``) step by
step: positional embedding, the causal mask passed explicitly, the batch-first
transformer, ``ln_final``, pooling per ``pool_type``, projection. A port of the
original CLIP/CoOp code (sequence-first, no mask argument) runs without error
and gives wrong features; ``tests/test_purify_text.py`` pins the parity.
"""

from __future__ import annotations

import torch

from cbpt_guard.errors import UnsupportedArchitectureError, UsageError


def _text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding the text tower's parts: the CLIP itself, or a CustomTextCLIP's ``text``."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer

    if isinstance(model, CLIP):
        tower = model
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        tower = model.text
    else:
        raise UnsupportedArchitectureError(
            f"prompt tuning needs an open_clip text transformer; {type(model).__name__} has none")
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        raise UnsupportedArchitectureError("prompt tuning does not support text towers with a CLS token or pad mask")
    if tower.positional_embedding.shape[0] != int(tower.context_length):
        raise UnsupportedArchitectureError("the text tower's positional embedding does not match its context length")
    return tower


class EmbeddingTextEncoder(torch.nn.Module):
    """Token embeddings (n, ctx, width) -> text features (n, d), exactly as ``model.encode_text``.

    Pooling follows the model: ``argmax`` and ``eos`` need the token ids (or
    the pooled positions directly); ``first`` and ``last`` need neither. The
    model's parameters are only read, never changed, and their
    ``requires_grad`` flags are left as they are.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.tower = _text_tower(model)
        self.pool_type = getattr(self.tower, "text_pool_type", getattr(self.tower, "pool_type", "argmax"))
        self.eos_id = getattr(self.tower, "text_eos_id", getattr(self.tower, "eos_id", None))
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise UnsupportedArchitectureError(f"text pooling {self.pool_type!r} gives no single feature per prompt")

    @property
    def context_length(self) -> int:
        """Tokens per prompt."""
        return int(self.tower.context_length)

    @property
    def width(self) -> int:
        """Width of the token embeddings."""
        return int(self.tower.token_embedding.weight.shape[1])

    def pool_positions(self, count: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The position pooled in each of ``count`` prompts, as open_clip's ``text_global_pool`` picks it. (count,)."""
        if self.pool_type in ("first", "last"):
            index = 0 if self.pool_type == "first" else self.context_length - 1
            return torch.full((count,), index, dtype=torch.long, device="cpu")  # (n,), moved by the caller
        if tokens is None:
            raise UsageError(f"{self.pool_type!r} pooling needs the token ids or the pooled positions")
        if self.pool_type == "argmax":  # the end-of-text id is the largest in the CLIP vocabulary
            return tokens.argmax(dim=-1)  # (n,)
        return (tokens == self.eos_id).int().argmax(dim=-1)  # (n,), the first end-of-text token

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of prompts given as embeddings (n, ctx, width); ``tokens`` (n, ctx) or ``positions`` (n,)."""
        tower = self.tower
        if positions is None:
            positions = self.pool_positions(embeddings.shape[0], tokens).to(embeddings.device)  # (n,)
        # Under the causal mask the token at position p sees only positions <= p, so the tokens after the
        # last pooled position cannot change any pooled feature: cutting them off gives the same features
        # (up to float summation order) for a fraction of the work (a 4-token context and a class name is
        # about 12 of 77 positions). A tower without the mask attends both ways and keeps every position.
        mask = tower.attn_mask
        length = embeddings.shape[1] if mask is None else int(positions.max()) + 1
        cast_dtype = tower.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast_dtype)  # (n, L, width)
        x = x + tower.positional_embedding[:length].to(cast_dtype)  # (n, L, width)
        x = tower.transformer(x, attn_mask=None if mask is None else mask[:length, :length])  # (n, L, width)
        x = tower.ln_final(x)  # (n, L, width)
        x = x[torch.arange(x.shape[0], device=x.device), positions]  # (n, width)
        projection = tower.text_projection
        if isinstance(projection, torch.nn.Linear):
            x = projection(x)  # (n, d)
        elif projection is not None:
            x = x @ projection  # (n, d)
        return x
