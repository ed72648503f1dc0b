"""CoOp prompts with class-specific context (METHOD.md section 5).

For class c the prompt is ``[SOT] v_c1 .. v_cn <class name tokens> . [EOT] <padding>``.
Only the context vectors v (n_cls, n_ctx, width) learn; the start token and
everything after the context are frozen token embeddings, kept as
non-persistent buffers so that ``state_dict()`` holds ``ctx`` alone. The
context starts from the embedding of "a photo of a" in every class row, so
tuning starts from the hand-written zero-shot classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cbpt_guard.classifier import tokenizer
from cbpt_guard.errors import ClassListError, UsageError
from cbpt_guard.purify.text_encoder import EmbeddingTextEncoder


def prompt_tokens(classnames: Sequence[str], context_ids: Sequence[int], context_length: int) -> torch.Tensor:
    """Token ids of ``[SOT] <context ids> <name> . [EOT]`` per class, zero-padded. Returns (n_cls, ctx_len).

    The ids are what the tokenizer gives for the same text (its BPE works word
    by word, so encoding the context and the name apart gives the same ids).
    Raises :class:`UsageError` when a prompt does not fit: truncating it would
    cut off the class name or the end-of-text token the encoder pools at.
    """
    tokenize = tokenizer(context_length)
    rows = torch.zeros(len(classnames), context_length, dtype=torch.long, device="cpu")  # (n_cls, ctx_len), 0: padding
    for row, name in enumerate(classnames):
        ids = [tokenize.sot_token_id, *context_ids, *tokenize.encode(f"{name}."), tokenize.eot_token_id]
        if len(ids) > context_length:
            raise UsageError(f"class name {name!r} with {len(context_ids)} context tokens needs {len(ids)} tokens; "
                             f"the model's context length is {context_length}")
        rows[row, : len(ids)] = torch.tensor(ids, device="cpu")
    return rows


class ClassPromptLearner(torch.nn.Module):
    """Learnable class-specific context for ``classnames``; ``forward()`` gives the prompt embeddings.

    ``n_ctx`` context vectors per class are initialised from the token
    embeddings of ``init``: its first ``n_ctx`` tokens, padded (if ``init`` is
    shorter) with small random vectors drawn from ``seed``.
    """

    def __init__(self, model: torch.nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 init: str = "a photo of a", seed: int = 0):
        super().__init__()
        if not classnames:
            raise ClassListError("prompt tuning needs at least one class name")
        if n_ctx < 1:
            raise UsageError(f"n_ctx must be at least 1, got {n_ctx}")
        self.classnames = list(classnames)
        self.n_ctx = n_ctx
        text = EmbeddingTextEncoder(model)  # refuses text towers it cannot follow
        tokenize = tokenizer(text.context_length)
        init_ids = tokenize.encode(init)[:n_ctx]
        filler = tokenize.encode("x")  # CoOp's placeholder id for context positions beyond ``init``
        extra = n_ctx - len(init_ids)
        embedding = text.tower.token_embedding
        tokens = prompt_tokens(self.classnames, init_ids + filler * extra, text.context_length)  # (n_cls, ctx_len)
        tokens = tokens.to(embedding.weight.device)
        with torch.no_grad():
            frozen = embedding(tokens).detach()  # (n_cls, ctx_len, width)
            context = frozen[0, 1 : 1 + n_ctx].clone()  # (n_ctx, width), the same in every row
            generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same context on every device
            noise = 0.02 * torch.randn(extra, context.shape[1], generator=generator, device="cpu")
            context[len(init_ids) :] = noise.to(context)  # (extra, width), CoOp's std for random context
        self.ctx = torch.nn.Parameter(context.unsqueeze(0).repeat(len(self.classnames), 1, 1))  # (n_cls, n_ctx, width)
        self.register_buffer("prefix", frozen[:, :1].clone(), persistent=False)  # (n_cls, 1, width): [SOT]
        self.register_buffer("suffix", frozen[:, 1 + n_ctx :].clone(), persistent=False)  # (n_cls, rest, width)
        self.register_buffer("tokens", tokens, persistent=False)  # (n_cls, ctx_len): finds [EOT] for pooling

    def forward(self) -> torch.Tensor:
        """The prompt embeddings. Returns (n_cls, ctx_len, width)."""
        return torch.cat(
            [
                self.prefix,  # (n_cls, 1, width)
                self.ctx.to(self.prefix.dtype),  # (n_cls, n_ctx, width)
                self.suffix,  # (n_cls, ctx_len - 1 - n_ctx, width)
            ],
            dim=1,
        )  # (n_cls, ctx_len, width)

    def class_embeddings(self, encoder: EmbeddingTextEncoder) -> torch.Tensor:
        """Unit text features of the current prompts through ``encoder``. Returns (n_cls, d)."""
        return F.normalize(encoder(self(), self.tokens), dim=-1)  # (n_cls, d)
