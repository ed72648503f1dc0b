"""Convert a Hugging Face transformers CLIP checkpoint into an open_clip ``CLIP``, in memory.

Model hubs mostly publish CLIP as a transformers directory (``config.json`` plus
``model.safetensors``). The rest of cbpt-guard works on open_clip models, so
intake translates the configuration into open_clip's local-dir format
(``model_cfg`` and ``preprocess_cfg``) and renames (and fuses, and transposes)
the weights into open_clip's ``CLIP`` state dict. transformers itself is never
imported: the translation reads plain dicts and tensors, so no remote code can
run.

The two implementations compute the same function: the same pre-LN transformer
blocks, the same causal text mask, the [CLS] token for images and the
end-of-text token for text, bias-free projections and a scalar ``logit_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cbpt_guard.errors import MalformedCheckpointError, UnsupportedArchitectureError
from cbpt_guard.intake.model_config import MAX_CONFIG_INT, is_finite_number, short

__all__ = ["is_hf_clip_config", "open_clip_config_from_hf", "convert_hf_state_dict"]

# CLIP's (OpenAI's) normalisation, which open_clip and transformers both default to.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers saves only the values that differ from these defaults, so a
# missing key means the default (CLIPTextConfig / CLIPVisionConfig / CLIPConfig).
_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_DEFAULT_PROJECTION_DIM = 512

# hidden_act -> (open_clip quick_gelu flag, act_kwargs for nn.GELU).
# "gelu" in transformers is the exact (erf) GELU, as is torch's nn.GELU default.
_ACTIVATIONS: dict[str, tuple[bool, dict | None]] = {
    "quick_gelu": (True, None),
    "gelu": (False, None),
    "gelu_pytorch_tanh": (False, {"approximate": "tanh"}),
    "gelu_new": (False, {"approximate": "tanh"}),
}

# Non-persistent index buffers that older transformers versions saved; current
# transformers ignores them on load, and so does the conversion.
_IGNORED_KEYS = (
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
)

_LEGACY_EOS_TOKEN_ID = 2


def is_hf_clip_config(config: object) -> bool:
    """Whether a parsed ``config.json`` describes a transformers ``CLIPModel``.

    True for ``model_type`` "clip", for ``architectures`` naming "CLIPModel", or
    (when no model_type is given) for text and vision sub-configs of type
    clip_text_model and clip_vision_model. A different declared model_type
    (siglip, chinese_clip, ...) wins: transformers would build that class instead.
    """
    if not isinstance(config, Mapping):
        return False
    model_type = config.get("model_type")
    if model_type is not None:
        return model_type == "clip"
    architectures = config.get("architectures")
    if isinstance(architectures, list) and "CLIPModel" in architectures:
        return True
    text, vision = config.get("text_config"), config.get("vision_config")
    return (
        isinstance(text, Mapping)
        and isinstance(vision, Mapping)
        and text.get("model_type") == "clip_text_model"
        and vision.get("model_type") == "clip_vision_model"
    )


def open_clip_config_from_hf(
    config: Mapping, preprocessor: Mapping | None = None
) -> tuple[dict, dict]:
    """Translate a transformers CLIP ``config.json`` into open_clip's ``(model_cfg, preprocess_cfg)``.

    ``model_cfg`` builds an ``open_clip.model.CLIP`` (``CLIP(**model_cfg)``) whose
    state dict :func:`convert_hf_state_dict` fills. ``preprocess_cfg`` uses the
    image size of the vision tower and CLIP's mean and std, unless ``config`` or
    ``preprocessor`` (a parsed ``preprocessor_config.json``, which wins) carries
    ``image_mean`` / ``image_std``.

    Raises:
        UnsupportedArchitectureError: not a CLIP config, or a variant open_clip's
            CLIP cannot reproduce (another activation, a non-CLIP tower, ...).
        MalformedCheckpointError: a field has the wrong type or an impossible value.
    """
    if not is_hf_clip_config(config):
        raise UnsupportedArchitectureError("config.json does not describe a transformers CLIPModel")
    text = _sub_config(config, "text", _TEXT_DEFAULTS, "clip_text_model")
    vision = _sub_config(config, "vision", _VISION_DEFAULTS, "clip_vision_model")

    text_quick, text_act_kwargs = _activation(text, "text")
    vision_quick, vision_act_kwargs = _activation(vision, "vision")
    if text_quick != vision_quick:
        # open_clip has one quick_gelu flag for both towers.
        raise UnsupportedArchitectureError(
            f"towers mix activations ({text['hidden_act']!r} text, {vision['hidden_act']!r} vision)"
        )

    vision_cfg = _vision_cfg(vision)
    if vision_act_kwargs:
        vision_cfg["act_kwargs"] = vision_act_kwargs
    text_cfg = _text_cfg(text)
    if text_act_kwargs:
        text_cfg["act_kwargs"] = text_act_kwargs

    model_cfg = {
        "embed_dim": _positive_int(config, "projection_dim", "config", _DEFAULT_PROJECTION_DIM),
        "quick_gelu": text_quick,
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }
    return model_cfg, _preprocess_cfg(config, preprocessor, vision_cfg["image_size"])


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping) -> dict[str, torch.Tensor]:
    """Rename a transformers ``CLIPModel`` state dict into the open_clip ``CLIP`` one that ``model_cfg`` builds.

    Every key is consumed exactly once (the legacy ``position_ids`` buffers are
    dropped on purpose), and every tensor's shape is checked against
    ``model_cfg``, so a checkpoint that does not match its own config fails here
    with a typed error rather than inside ``load_state_dict``. The input is not
    modified.

    Raises:
        MalformedCheckpointError: a key is missing or left over (named in the
            message), a value is not a tensor, or a shape does not match.
    """
    remaining = dict(state_dict)
    for key in _IGNORED_KEYS:
        remaining.pop(key, None)
    embed_dim = model_cfg["embed_dim"]
    converted = {
        **_convert_vision(remaining, model_cfg["vision_cfg"], embed_dim),
        **_convert_text(remaining, model_cfg["text_cfg"], embed_dim),
        "logit_scale": _take(remaining, "logit_scale", None).reshape(()),  # a scalar in both
    }
    if remaining:
        extra = sorted(remaining)
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise MalformedCheckpointError(f"unexpected key {extra[0]!r} in the Hugging Face CLIP checkpoint{more}")
    return converted


# --- configuration -----------------------------------------------------------


def _sub_config(config: Mapping, tower: str, defaults: dict, model_type: str) -> dict:
    """One tower's effective config: defaults, then ``<tower>_config``, then legacy ``<tower>_config_dict``."""
    sub = config.get(f"{tower}_config") or {}
    legacy = config.get(f"{tower}_config_dict")
    if not isinstance(sub, Mapping) or not (legacy is None or isinstance(legacy, Mapping)):
        raise MalformedCheckpointError(f"config.json: {tower}_config must be an object")
    merged = {**defaults, **sub}
    if legacy is not None:
        # transformers rebuilds the tower from the legacy dict (plus defaults) and lets it override.
        merged.update({**defaults, **legacy})
    declared = merged.get("model_type")
    if declared is not None and declared != model_type:
        raise UnsupportedArchitectureError(f"the {tower} tower is {short(declared)}, not a CLIP {tower} transformer")
    return merged


def _activation(sub: Mapping, tower: str) -> tuple[bool, dict | None]:
    """The open_clip (quick_gelu, act_kwargs) pair reproducing a tower's ``hidden_act``."""
    act = sub["hidden_act"]
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise UnsupportedArchitectureError(f"the {tower} tower's activation {short(act)} has no open_clip equivalent")
    return _ACTIVATIONS[act]


def _vision_cfg(vision: Mapping) -> dict:
    """open_clip ``vision_cfg`` for a CLIP vision transformer."""
    if vision.get("num_channels") != 3:
        raise UnsupportedArchitectureError(
            f"the vision tower takes {vision.get('num_channels')!r} channels; open_clip's takes 3"
        )
    width = _positive_int(vision, "hidden_size", "vision_config")
    heads = _positive_int(vision, "num_attention_heads", "vision_config")
    if width % heads:
        raise MalformedCheckpointError(f"vision_config: hidden_size {width} is not a multiple of {heads} heads")
    return {
        "image_size": _square_size(vision, "image_size"),
        "patch_size": _square_size(vision, "patch_size"),
        "width": width,
        "layers": _positive_int(vision, "num_hidden_layers", "vision_config"),
        "head_width": width // heads,
        "mlp_ratio": _mlp_ratio(width, _positive_int(vision, "intermediate_size", "vision_config")),
        "pool_type": "tok",  # transformers pools the [CLS] token, post-LN; LN is per token, so order is moot
        "norm_kwargs": {"eps": _positive_float(vision, "layer_norm_eps", "vision_config")},
    }


def _text_cfg(text: Mapping) -> dict:
    """open_clip ``text_cfg`` for a CLIP text transformer, with transformers' pooling rule."""
    width = _positive_int(text, "hidden_size", "text_config")
    heads = _positive_int(text, "num_attention_heads", "text_config")
    vocab_size = _positive_int(text, "vocab_size", "text_config")
    if width % heads:
        raise MalformedCheckpointError(f"text_config: hidden_size {width} is not a multiple of {heads} heads")
    text_cfg = {
        "context_length": _positive_int(text, "max_position_embeddings", "text_config"),
        "vocab_size": vocab_size,
        "width": width,
        "heads": heads,
        "layers": _positive_int(text, "num_hidden_layers", "text_config"),
        "mlp_ratio": _mlp_ratio(width, _positive_int(text, "intermediate_size", "text_config")),
        "proj_type": "linear",
        "proj_bias": False,  # transformers' text_projection has no bias
        "norm_kwargs": {"eps": _positive_float(text, "layer_norm_eps", "text_config")},
    }
    text_cfg.update(_text_pooling(text.get("eos_token_id"), vocab_size))
    return text_cfg


def _text_pooling(eos_token_id: object, vocab_size: int) -> dict:
    """open_clip ``pool_type`` (and ``eos_id``) matching transformers' choice of the pooled text token.

    transformers keeps two rules (CLIPTextTransformer.forward): configs from
    before its PR #24773 carry the wrong ``eos_token_id`` 2 and pool at the
    largest token id (the end-of-text token is the largest id of CLIP's
    vocabulary), which is open_clip's ``argmax``; newer configs pool at the
    first occurrence of ``eos_token_id``, which is open_clip's ``eos``. The two
    differ on ids where the largest token is not the first end-of-text one.
    """
    if not isinstance(eos_token_id, int) or isinstance(eos_token_id, bool) or not 0 <= eos_token_id < vocab_size:
        raise UnsupportedArchitectureError(
            f"text_config: eos_token_id {short(eos_token_id)} is not one token of the vocabulary"
        )
    if eos_token_id == _LEGACY_EOS_TOKEN_ID:
        return {"pool_type": "argmax"}
    return {"pool_type": "eos", "eos_id": eos_token_id}


def _preprocess_cfg(config: Mapping, preprocessor: Mapping | None, image_size: int) -> dict:
    """open_clip ``preprocess_cfg``: the tower's input size and the normalisation the checkpoint declares."""
    sources = [config] + ([preprocessor] if preprocessor is not None else [])
    mean, std = OPENAI_MEAN, OPENAI_STD
    for source in sources:  # later sources win
        mean = _channel_stats(source, "image_mean", mean)
        std = _channel_stats(source, "image_std", std)
    if min(std) <= 0:
        raise MalformedCheckpointError(f"image_std {list(std)} must be positive")
    # transformers' CLIPImageProcessor resizes the shortest side (bicubic), then centre-crops.
    return {
        "size": image_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def _channel_stats(source: Mapping, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Three per-channel floats under ``key``, or ``default`` when absent."""
    value = source.get(key)
    if value is None:
        return default
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(is_finite_number(v) for v in value)
    ):
        raise MalformedCheckpointError(f"{key} must be a list of 3 finite numbers, got {short(value)}")
    return tuple(float(v) for v in value)


def _mlp_ratio(width: int, intermediate: int) -> float:
    """A ratio for which open_clip's ``int(width * mlp_ratio)`` is exactly ``intermediate``."""
    ratio = intermediate / width
    if int(width * ratio) != intermediate:
        # Float round-off fell below the integer; aim at the middle of the interval instead.
        ratio = (intermediate + 0.5) / width
    return ratio


def _positive_int(sub: Mapping, key: str, where: str, default: int | None = None) -> int:
    """``sub[key]`` as a positive int, or a MalformedCheckpointError naming it."""
    value = sub.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_CONFIG_INT:
        raise MalformedCheckpointError(
            f"{where}: {key} must be a positive integer up to {MAX_CONFIG_INT}, got {short(value)}")
    return value


def _positive_float(sub: Mapping, key: str, where: str) -> float:
    """``sub[key]`` as a positive float, or a MalformedCheckpointError naming it."""
    value = sub.get(key)
    if not is_finite_number(value) or value <= 0:
        raise MalformedCheckpointError(f"{where}: {key} must be a positive number, got {short(value)}")
    return float(value)


def _square_size(vision: Mapping, key: str) -> int:
    """A side length given as an int or as two equal ints (transformers' CLIP only handles squares)."""
    value = vision.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    elif isinstance(value, (list, tuple)):
        raise UnsupportedArchitectureError(f"vision_config: non-square {key} {short(list(value))} is not supported")
    return _positive_int({key: value}, key, "vision_config")


# --- weights -----------------------------------------------------------------


def _take(remaining: dict, key: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Pop one tensor, checking its shape (``None``: a single element)."""
    if key not in remaining:
        raise MalformedCheckpointError(f"missing key {key!r} in the Hugging Face CLIP checkpoint")
    value = remaining.pop(key)
    if not isinstance(value, torch.Tensor):
        raise MalformedCheckpointError(f"{key!r} is not a tensor")
    if (shape is None and value.numel() != 1) or (shape is not None and tuple(value.shape) != shape):
        expected = "one element" if shape is None else str(shape)
        raise MalformedCheckpointError(f"{key!r} has shape {tuple(value.shape)}, expected {expected}")
    return value


def _convert_encoder(remaining: dict, src: str, dst: str, layers: int, width: int, mlp_width: int) -> dict:
    """Blocks ``src.encoder.layers.i`` -> ``dst.resblocks.i`` (pre-LN attention + MLP, same maths)."""
    out = {}
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}", f"{dst}.resblocks.{i}"
        # nn.MultiheadAttention keeps q, k, v stacked in that order along the output dimension.
        out[f"{d}.attn.in_proj_weight"] = torch.cat(
            [_take(remaining, f"{s}.self_attn.{p}_proj.weight", (width, width)) for p in "qkv"]
        )  # (3 * width, width)
        out[f"{d}.attn.in_proj_bias"] = torch.cat(
            [_take(remaining, f"{s}.self_attn.{p}_proj.bias", (width,)) for p in "qkv"]
        )  # (3 * width,)
        renames = {
            "self_attn.out_proj.weight": ("attn.out_proj.weight", (width, width)),
            "self_attn.out_proj.bias": ("attn.out_proj.bias", (width,)),
            "layer_norm1.weight": ("ln_1.weight", (width,)),
            "layer_norm1.bias": ("ln_1.bias", (width,)),
            "layer_norm2.weight": ("ln_2.weight", (width,)),
            "layer_norm2.bias": ("ln_2.bias", (width,)),
            "mlp.fc1.weight": ("mlp.c_fc.weight", (mlp_width, width)),
            "mlp.fc1.bias": ("mlp.c_fc.bias", (mlp_width,)),
            "mlp.fc2.weight": ("mlp.c_proj.weight", (width, mlp_width)),
            "mlp.fc2.bias": ("mlp.c_proj.bias", (width,)),
        }
        for hf_name, (oc_name, shape) in renames.items():
            out[f"{d}.{oc_name}"] = _take(remaining, f"{s}.{hf_name}", shape)
    return out


def _convert_vision(remaining: dict, vision_cfg: Mapping, embed_dim: int) -> dict:
    """The vision tower and ``visual_projection`` -> ``visual.*``."""
    width = vision_cfg["width"]
    patch = vision_cfg["patch_size"]
    n_pos = (vision_cfg["image_size"] // patch) ** 2 + 1  # patches + [CLS]
    hf = "vision_model"
    out = {
        "visual.class_embedding": _take(remaining, f"{hf}.embeddings.class_embedding", (width,)),
        "visual.conv1.weight": _take(remaining, f"{hf}.embeddings.patch_embedding.weight", (width, 3, patch, patch)),
        "visual.positional_embedding": _take(remaining, f"{hf}.embeddings.position_embedding.weight", (n_pos, width)),
        "visual.ln_pre.weight": _take(remaining, f"{hf}.pre_layrnorm.weight", (width,)),  # sic: "layrnorm"
        "visual.ln_pre.bias": _take(remaining, f"{hf}.pre_layrnorm.bias", (width,)),
        "visual.ln_post.weight": _take(remaining, f"{hf}.post_layernorm.weight", (width,)),
        "visual.ln_post.bias": _take(remaining, f"{hf}.post_layernorm.bias", (width,)),
        # nn.Linear stores (embed_dim, width); open_clip computes x @ proj with proj (width, embed_dim).
        "visual.proj": _take(remaining, "visual_projection.weight", (embed_dim, width)).T.contiguous(),
    }
    mlp_width = int(width * vision_cfg["mlp_ratio"])
    out.update(_convert_encoder(remaining, hf, "visual.transformer", vision_cfg["layers"], width, mlp_width))
    return out


def _convert_text(remaining: dict, text_cfg: Mapping, embed_dim: int) -> dict:
    """The text tower and ``text_projection`` -> open_clip's top-level text modules."""
    width = text_cfg["width"]
    hf = "text_model"
    out = {
        "token_embedding.weight": _take(
            remaining, f"{hf}.embeddings.token_embedding.weight", (text_cfg["vocab_size"], width)
        ),
        "positional_embedding": _take(
            remaining, f"{hf}.embeddings.position_embedding.weight", (text_cfg["context_length"], width)
        ),
        "ln_final.weight": _take(remaining, f"{hf}.final_layer_norm.weight", (width,)),
        "ln_final.bias": _take(remaining, f"{hf}.final_layer_norm.bias", (width,)),
        # (embed_dim, width) -> (width, embed_dim), as for the visual projection
        "text_projection": _take(remaining, "text_projection.weight", (embed_dim, width)).T.contiguous(),
    }
    mlp_width = int(width * text_cfg["mlp_ratio"])
    out.update(_convert_encoder(remaining, hf, "transformer", text_cfg["layers"], width, mlp_width))
    return out
