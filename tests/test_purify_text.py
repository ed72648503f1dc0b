"""The embedding-fed text encoder follows open_clip's text path; prompt tuning starts at the hand-written prompt."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import TINY_CONFIGS, build_tiny

from cbpt_guard.classifier import class_embeddings, tokenizer
from cbpt_guard.errors import UnsupportedArchitectureError, UsageError
from cbpt_guard.intake.architecture import build_model
from cbpt_guard.purify.prompt_learner import ClassPromptLearner
from cbpt_guard.purify.text_encoder import EmbeddingTextEncoder

torch.set_num_threads(1)

PROMPTS = ["a photo of a cat.", "a blurry photo of a traffic light in the rain.", "itap of a hippopotamus.", "x"]
CLASSES = ["cat", "traffic light", "hippopotamus"]  # one, two and three BPE tokens
PARITY_ATOL = 1e-5
"""The encoder skips the positions after the last pooled token (the causal mask makes them irrelevant), so its
sums run in another order than encode_text's: ulp-level differences (1e-6 measured), against the 1e-3 and more
that a missing mask or a wrong pooling position gives."""


def _tokens(model) -> torch.Tensor:
    return tokenizer(model.context_length)(PROMPTS)  # (4, ctx)


def _variant(text_cfg: dict | None = None, custom_text: bool = False):
    """The tiny ViT with a changed text tower, at open_clip's own initialisation."""
    config = copy.deepcopy(TINY_CONFIGS["vit"])
    config["text_cfg"].update(text_cfg or {})
    if custom_text:
        config["custom_text"] = True
    torch.manual_seed(0)
    return build_model(config)


def _text_parts(model):
    return model.text if hasattr(model, "text") else model


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_encoder_matches_encode_text_for_every_tiny_family(family):
    from open_clip.model import CLIP

    model, _ = build_tiny(family)
    assert isinstance(model, CLIP)
    tokens = _tokens(model)
    with torch.no_grad():
        ours = EmbeddingTextEncoder(model)(model.token_embedding(tokens), tokens)  # (4, d)
        reference = model.encode_text(tokens)  # (4, d)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("text_cfg", "custom_text", "projection"),
    [
        ({"proj_bias": True}, False, torch.nn.Linear),
        ({"proj_type": "none"}, False, type(None)),
        ({"pool_type": "eos", "eos_id": 49407}, False, torch.nn.Parameter),
        ({"pool_type": "last"}, False, torch.nn.Parameter),
        ({"no_causal_mask": True}, False, torch.nn.Parameter),
        ({}, True, torch.nn.Parameter),
    ],
    ids=["linear-projection", "no-projection", "eos-pool", "last-pool", "bidirectional", "custom-text-clip"],
)
def test_encoder_matches_encode_text_for_text_tower_variants(text_cfg, custom_text, projection):
    model = _variant(text_cfg, custom_text)
    tokens = _tokens(model)
    encoder = EmbeddingTextEncoder(model)
    assert type(encoder.tower.text_projection) is projection
    with torch.no_grad():
        ours = encoder(_text_parts(model).token_embedding(tokens), tokens)
        reference = model.encode_text(tokens)
    torch.testing.assert_close(ours, reference, atol=PARITY_ATOL, rtol=0)


def test_encoder_accepts_pooled_positions_instead_of_token_ids():
    model = _variant()
    tokens = _tokens(model)
    encoder = EmbeddingTextEncoder(model)
    with torch.no_grad():
        ours = encoder(model.token_embedding(tokens), positions=tokens.argmax(dim=-1))
    torch.testing.assert_close(ours, model.encode_text(tokens), atol=PARITY_ATOL, rtol=0)


def test_dropping_the_causal_mask_changes_the_features(monkeypatch):
    """What a literal port of older CLIP code does; the parity tests above would catch it."""
    model = _variant()
    tokens = _tokens(model)
    with torch.no_grad():
        reference = model.encode_text(tokens)
        monkeypatch.setattr(model, "attn_mask", None)
        unmasked = EmbeddingTextEncoder(model)(model.token_embedding(tokens), tokens)
    assert (unmasked - reference).abs().max() > 1e-3


def test_refuses_text_pooling_that_gives_no_single_feature():
    with pytest.raises(UnsupportedArchitectureError, match="pooling"):
        EmbeddingTextEncoder(_variant({"pool_type": "none"}))


def test_refuses_a_model_without_an_open_clip_text_transformer():
    with pytest.raises(UnsupportedArchitectureError, match="text transformer"):
        EmbeddingTextEncoder(torch.nn.Linear(2, 2))


def test_argmax_pooling_without_token_ids_is_a_usage_error():
    model = _variant()
    with pytest.raises(UsageError, match="token ids"):
        EmbeddingTextEncoder(model)(torch.zeros(1, model.context_length, 32))


def test_prompt_learner_state_dict_holds_only_ctx():
    learner = ClassPromptLearner(_variant(), CLASSES, n_ctx=4)
    assert list(learner.state_dict()) == ["ctx"]
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert learner.ctx.shape == (3, 4, 32)


@pytest.mark.parametrize("custom_text", [False, True], ids=["clip", "custom-text-clip"])
def test_initial_prompts_give_the_hand_written_class_embeddings(custom_text):
    model = _variant(custom_text=custom_text)
    learner = ClassPromptLearner(model, CLASSES, n_ctx=4, init="a photo of a")
    with torch.no_grad():
        tuned = learner.class_embeddings(EmbeddingTextEncoder(model))  # (3, d)
    expected = class_embeddings(model, CLASSES, ["a photo of a {}."])  # (3, d)
    torch.testing.assert_close(tuned, expected, atol=1e-5, rtol=0)


def test_prompt_tokens_match_the_tokenizer_for_names_of_different_lengths():
    model = _variant()
    learner = ClassPromptLearner(model, CLASSES, n_ctx=4)
    expected = tokenizer(model.context_length)([f"a photo of a {name}." for name in CLASSES])
    assert torch.equal(learner.tokens, expected)
    assert learner().shape == (3, model.context_length, 32)


def test_context_uses_the_first_init_tokens_when_n_ctx_is_smaller():
    model = _variant()
    learner = ClassPromptLearner(model, CLASSES, n_ctx=2, init="a photo of a")
    ids = torch.tensor(tokenizer(model.context_length).encode("a photo"))
    with torch.no_grad():
        expected = model.token_embedding(ids)  # (2, width)
    for row in learner.ctx:
        assert torch.equal(row, expected)


def test_context_beyond_the_init_words_is_small_seeded_noise():
    model = _variant()
    first, again = (ClassPromptLearner(model, CLASSES, n_ctx=6, seed=3) for _ in range(2))
    other = ClassPromptLearner(model, CLASSES, n_ctx=6, seed=4)
    with torch.no_grad():
        init = model.token_embedding(torch.tensor(tokenizer(model.context_length).encode("a photo of a")))
    assert torch.equal(first.ctx[:, :4], init.expand(3, -1, -1))
    assert torch.equal(first.ctx, again.ctx)
    assert not torch.equal(first.ctx[:, 4:], other.ctx[:, 4:])
    assert torch.equal(first.ctx[0, 4:], first.ctx[2, 4:])  # every class starts from the same context
    assert 0 < first.ctx[:, 4:].abs().max() < 0.2
    assert first().shape == (3, model.context_length, 32)


def test_class_name_that_does_not_fit_the_context_is_a_usage_error():
    model = _variant({"context_length": 12})
    ClassPromptLearner(model, ["a b c d e"], n_ctx=4)  # 1 + 4 + 5 + 1 + 1 = 12 tokens: fits exactly
    with pytest.raises(UsageError, match="context length is 12"):
        ClassPromptLearner(model, ["a b c d e f"], n_ctx=4)
