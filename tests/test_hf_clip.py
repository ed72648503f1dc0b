"""A transformers CLIP checkpoint converts to an open_clip CLIP that computes the same features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from cbpt_guard.errors import MalformedCheckpointError, UnsupportedArchitectureError  # noqa: E402
from cbpt_guard.intake.hf_clip import (  # noqa: E402
    OPENAI_MEAN,
    OPENAI_STD,
    convert_hf_state_dict,
    is_hf_clip_config,
    open_clip_config_from_hf,
)

torch.set_num_threads(1)

CONTEXT_LENGTH = 77
# The largest id (49407, CLIP's end-of-text) sits after a 2 and a 1000, so the legacy
# argmax rule and the first-eos rule pool at different positions on this row.
CRAFTED_IDS = [49406, 5000, 2, 1000, 300, 49407] + [0] * (CONTEXT_LENGTH - 6)


def _tiny_hf_config(
    hidden_act: str = "quick_gelu",
    eos_token_id: int = 49407,
    text: dict | None = None,
    vision: dict | None = None,
) -> transformers.CLIPConfig:
    """A small CLIPConfig with the real vocabulary size, so the open_clip tokenizer's ids fit."""
    text_config = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act=hidden_act,
        eos_token_id=eos_token_id,
    )
    vision_config = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act=hidden_act,
    )
    text_config.update(text or {})
    vision_config.update(vision or {})
    return transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)


def _save_hf_clip(directory: Path, config: transformers.CLIPConfig) -> transformers.CLIPModel:
    """Build a seeded CLIPModel, perturb every parameter (so no two norms or biases are equal), save it."""
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(directory)
    assert (directory / "model.safetensors").is_file()
    return model


def _read_back(directory: Path) -> tuple[dict, dict]:
    """config.json and model.safetensors as the loader sees them."""
    config = json.loads((directory / "config.json").read_text())
    return config, load_file(directory / "model.safetensors")


def _open_clip_from(directory: Path) -> tuple[torch.nn.Module, dict, dict]:
    """The converted open_clip CLIP (strictly loaded), its model_cfg and its preprocess_cfg."""
    config, state_dict = _read_back(directory)
    assert is_hf_clip_config(config)
    model_cfg, preprocess_cfg = open_clip_config_from_hf(config)
    model = open_clip.model.CLIP(**model_cfg).eval()
    model.load_state_dict(convert_hf_state_dict(state_dict, model_cfg), strict=True)
    return model, model_cfg, preprocess_cfg


def _pooled(output: object) -> torch.Tensor:
    """transformers 4.x returns the features; 5.x a model output whose pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _text_ids() -> torch.Tensor:
    """Real tokenizer rows plus the crafted row."""
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram of a backdoor trigger"])  # (2, 77)
    return torch.cat([tokens, torch.tensor([CRAFTED_IDS])])  # (3, 77)


def _assert_same_features(hf_model, oc_model) -> None:
    """Image and text features of both models agree to float32 round-off."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)  # (batch, channels, height, width)
    ids = _text_ids()
    with torch.no_grad():
        hf_image = _pooled(hf_model.get_image_features(pixel_values=images))  # (2, 32)
        oc_image = oc_model.encode_image(images)  # (2, 32)
        hf_text = _pooled(hf_model.get_text_features(input_ids=ids))  # (3, 32)
        oc_text = oc_model.encode_text(ids)  # (3, 32)
    assert hf_image.abs().mean() > 0.1 and hf_text.abs().mean() > 0.1  # far from trivially small
    torch.testing.assert_close(oc_image, hf_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(oc_text, hf_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(oc_model.logit_scale, hf_model.logit_scale)


@pytest.mark.parametrize(
    ("hidden_act", "eos_token_id"),
    [
        ("quick_gelu", 2),
        ("quick_gelu", 49407),
        ("gelu", 2),
        ("gelu", 49407),
        ("gelu", 1000),
        ("gelu_pytorch_tanh", 49407),
    ],
)
def test_converted_model_gives_the_same_features_as_transformers(tmp_path, hidden_act, eos_token_id):
    hf_model = _save_hf_clip(tmp_path, _tiny_hf_config(hidden_act, eos_token_id))
    oc_model, model_cfg, _ = _open_clip_from(tmp_path)

    assert model_cfg["quick_gelu"] is (hidden_act == "quick_gelu")
    _assert_same_features(hf_model, oc_model)


def test_converted_model_keeps_each_towers_layer_norm_eps_and_odd_mlp_widths(tmp_path):
    # Large, distinct eps values change the output visibly; 28 * (61 / 28) and
    # 44 * (98 / 44) truncate below 61 and 98 in float, so a naive mlp_ratio fails.
    config = _tiny_hf_config(
        "gelu",
        text=dict(hidden_size=28, intermediate_size=61, layer_norm_eps=0.25),
        vision=dict(hidden_size=44, intermediate_size=98, layer_norm_eps=0.5),
    )
    hf_model = _save_hf_clip(tmp_path, config)
    oc_model, model_cfg, _ = _open_clip_from(tmp_path)

    assert model_cfg["text_cfg"]["norm_kwargs"] == {"eps": 0.25}
    assert model_cfg["vision_cfg"]["norm_kwargs"] == {"eps": 0.5}
    _assert_same_features(hf_model, oc_model)


@pytest.mark.parametrize(
    ("eos_token_id", "expected"),
    [(2, {"pool_type": "argmax"}), (49407, {"pool_type": "eos", "eos_id": 49407})],
)
def test_text_pooling_follows_the_eos_convention_of_the_config(eos_token_id, expected):
    config = {"model_type": "clip", "text_config": {"eos_token_id": eos_token_id}}

    text_cfg = open_clip_config_from_hf(config)[0]["text_cfg"]

    assert {key: text_cfg[key] for key in expected} == expected
    assert ("eos_id" in text_cfg) == ("eos_id" in expected)


def test_defaults_of_an_abridged_config_describe_vit_b_32():
    model_cfg, preprocess_cfg = open_clip_config_from_hf({"architectures": ["CLIPModel"]})

    assert model_cfg["embed_dim"] == 512 and model_cfg["quick_gelu"] is True
    vision = model_cfg["vision_cfg"]
    assert (vision["width"], vision["layers"], vision["head_width"], vision["patch_size"]) == (768, 12, 64, 32)
    text = model_cfg["text_cfg"]
    assert (text["width"], text["heads"], text["layers"], text["context_length"]) == (512, 8, 12, 77)
    assert preprocess_cfg["size"] == 224
    assert preprocess_cfg["mean"] == list(OPENAI_MEAN) and preprocess_cfg["std"] == list(OPENAI_STD)


def test_declared_mean_and_std_replace_clip_defaults():
    config = {"model_type": "clip", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    preprocessor = {"image_std": [0.25, 0.25, 0.25]}

    preprocess_cfg = open_clip_config_from_hf(config, preprocessor)[1]

    assert preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
    assert preprocess_cfg["std"] == [0.25, 0.25, 0.25]


def test_legacy_config_dict_overrides_the_tower_config():
    config = {
        "model_type": "clip",
        "text_config": {"hidden_size": 512, "num_attention_heads": 8},
        "text_config_dict": {"hidden_size": 64, "num_attention_heads": 2},
    }

    text_cfg = open_clip_config_from_hf(config)[0]["text_cfg"]

    assert (text_cfg["width"], text_cfg["heads"]) == (64, 2)


def test_mlp_ratio_reproduces_the_intermediate_size_of_bigg():
    config = {"model_type": "clip", "vision_config": {"hidden_size": 1664, "num_attention_heads": 16,
                                                      "intermediate_size": 8192}}

    vision_cfg = open_clip_config_from_hf(config)[0]["vision_cfg"]

    assert int(vision_cfg["width"] * vision_cfg["mlp_ratio"]) == 8192


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "clip"},
        {"architectures": ["CLIPModel"]},
        {"text_config": {"model_type": "clip_text_model"}, "vision_config": {"model_type": "clip_vision_model"}},
    ],
)
def test_recognises_transformers_clip_configs(config):
    assert is_hf_clip_config(config)


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "siglip", "architectures": ["CLIPModel"]},
        {"architectures": ["ChineseCLIPModel"]},
        {"text_config": {"model_type": "clip_text_model"}},
        {},
        ["CLIPModel"],
    ],
)
def test_does_not_recognise_other_configs(config):
    assert not is_hf_clip_config(config)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"model_type": "siglip"}, "CLIPModel"),
        ({"model_type": "clip", "text_config": {"hidden_act": "relu"}, "vision_config": {"hidden_act": "relu"}},
         "'relu'"),
        ({"model_type": "clip", "text_config": {"hidden_act": "gelu"}}, "mix"),
        ({"model_type": "clip", "vision_config": {"model_type": "siglip_vision_model"}}, "siglip_vision_model"),
        ({"model_type": "clip", "vision_config": {"num_channels": 1}}, "channels"),
        ({"model_type": "clip", "vision_config": {"image_size": [224, 448]}}, "non-square"),
        ({"model_type": "clip", "text_config": {"eos_token_id": [2, 49407]}}, "eos_token_id"),
    ],
)
def test_unsupported_variants_raise_with_a_one_line_reason(config, named):
    with pytest.raises(UnsupportedArchitectureError) as raised:
        open_clip_config_from_hf(config)

    assert named in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "clip", "text_config": {"hidden_size": "512"}},
        {"model_type": "clip", "vision_config": {"hidden_size": 100, "num_attention_heads": 12}},
        {"model_type": "clip", "image_std": [0.5, 0.0, 0.5]},
        {"model_type": "clip", "text_config": "not an object"},
    ],
)
def test_impossible_config_values_raise_malformed(config):
    with pytest.raises(MalformedCheckpointError):
        open_clip_config_from_hf(config)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> tuple[dict, dict]:
    """(model_cfg, HF state dict) of one tiny saved checkpoint, shared by the key tests."""
    directory = tmp_path_factory.mktemp("hf_clip")
    _save_hf_clip(directory, _tiny_hf_config())
    config, state_dict = _read_back(directory)
    return open_clip_config_from_hf(config)[0], state_dict


def test_extra_key_raises_malformed_naming_it(saved_checkpoint):
    model_cfg, state_dict = saved_checkpoint
    tampered = {**state_dict, "vision_model.encoder.layers.9.mlp.fc1.weight": torch.zeros(1)}

    with pytest.raises(MalformedCheckpointError, match=r"vision_model\.encoder\.layers\.9\.mlp\.fc1\.weight"):
        convert_hf_state_dict(tampered, model_cfg)


def test_missing_key_raises_malformed_naming_it(saved_checkpoint):
    model_cfg, state_dict = saved_checkpoint
    tampered = {k: v for k, v in state_dict.items() if k != "text_model.encoder.layers.1.self_attn.k_proj.bias"}

    with pytest.raises(MalformedCheckpointError, match=r"text_model\.encoder\.layers\.1\.self_attn\.k_proj\.bias"):
        convert_hf_state_dict(tampered, model_cfg)


def test_wrong_shape_raises_malformed_naming_the_key(saved_checkpoint):
    model_cfg, state_dict = saved_checkpoint
    tampered = {**state_dict, "visual_projection.weight": torch.zeros(32, 7)}

    with pytest.raises(MalformedCheckpointError, match=r"visual_projection\.weight"):
        convert_hf_state_dict(tampered, model_cfg)


def test_legacy_position_ids_buffers_are_ignored_and_input_is_left_intact(saved_checkpoint):
    model_cfg, state_dict = saved_checkpoint
    with_buffers = {
        **state_dict,
        "text_model.embeddings.position_ids": torch.arange(CONTEXT_LENGTH)[None],
        "vision_model.embeddings.position_ids": torch.arange(17)[None],
    }
    keys_before = set(with_buffers)

    converted = convert_hf_state_dict(with_buffers, model_cfg)

    assert set(with_buffers) == keys_before
    expected = set(open_clip.model.CLIP(**model_cfg).state_dict())
    assert set(converted) == expected


def test_loader_accepts_a_transformers_directory_end_to_end(tmp_path):
    from cbpt_guard.intake import load_checkpoint

    hf_model = _save_hf_clip(tmp_path, _tiny_hf_config())
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )

    loaded = load_checkpoint(tmp_path)

    assert loaded.report.layout == "hf-clip-dir"
    assert loaded.report.preprocess["mean"] == [0.5, 0.5, 0.5]
    assert {f.path.rsplit("/", 1)[-1]: f.role for f in loaded.report.files}["model.safetensors"] == "weights"
    _assert_same_features(hf_model, loaded.model)
