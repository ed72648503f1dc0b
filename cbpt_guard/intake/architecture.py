"""Build an open_clip model from its configuration, with no download and no weights.

open_clip's ``create_model`` would also fetch pretrained towers and read the
weights file itself; intake must load the bytes it hashed, so it builds the
empty architecture here and fills it from an already-read state dict.
"""

from __future__ import annotations

import copy

import torch

from cbpt_guard.errors import MalformedCheckpointError, UnsupportedArchitectureError


def config_for_name(name: str) -> dict:
    """The ``model_cfg`` of a built-in open_clip architecture, e.g. ``"ViT-B-32"``."""
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise UnsupportedArchitectureError(
            f"unknown architecture {name!r} (open_clip.list_models() lists the {len(open_clip.list_models())} it knows)"
        )
    return copy.deepcopy(config)


def build_model(model_cfg: dict, preprocess_cfg: dict | None = None) -> torch.nn.Module:
    """Instantiate the (randomly initialised) open_clip model that ``model_cfg`` describes.

    ``preprocess_cfg`` (mean, std, interpolation, ...) is merged over open_clip's
    defaults and attached to the model, where open_clip's own tools look for it.

    Architectures that would need a download (a Hugging Face text tower, a
    pretrained timm tower) or that are not contrastive classifiers (CoCa) are
    refused with :class:`UnsupportedArchitectureError`.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict) or not isinstance(
        cfg.get("text_cfg"), dict
    ):
        raise MalformedCheckpointError("model_cfg must hold 'embed_dim', 'vision_cfg' and 'text_cfg'")
    if "multimodal_cfg" in cfg:
        raise UnsupportedArchitectureError("CoCa (captioning) models are not supported")
    if "hf_model_name" in cfg["text_cfg"]:
        raise UnsupportedArchitectureError(
            f"text tower {cfg['text_cfg']['hf_model_name']!r} is a Hugging Face model that would need a download"
        )
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # the checkpoint supplies every weight
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # initial values are overwritten; fixed anyway for determinism
            model = model_class(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as error:
        raise UnsupportedArchitectureError(f"open_clip cannot build this configuration ({error})") from None
    _attach_preprocess(model, preprocess_cfg or {})
    return model.eval()


def _attach_preprocess(model: torch.nn.Module, preprocess_cfg: dict) -> None:
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg if isinstance(preprocess_cfg, dict) else {})
    merged["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, merged)


def check_state_dict(model: torch.nn.Module, state_dict: dict, origin: str) -> None:
    """Compare a state dict's names and shapes with the architecture; name the first mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise MalformedCheckpointError(f"{origin}: tensors do not match the architecture: {'; '.join(parts)}")
    for name, tensor in expected.items():
        got = state_dict[name]
        if not isinstance(got, torch.Tensor):
            raise MalformedCheckpointError(f"{origin}: entry {name!r} is not a tensor")
        if tuple(got.shape) != tuple(tensor.shape):
            raise MalformedCheckpointError(
                f"{origin}: tensor {name!r} has shape {tuple(got.shape)}, the architecture expects {tuple(tensor.shape)}"
            )
        if got.is_floating_point() != tensor.is_floating_point():
            raise MalformedCheckpointError(f"{origin}: tensor {name!r} has dtype {got.dtype}, expected {tensor.dtype}")


def normalise_state_dict(model: torch.nn.Module, state_dict: dict) -> dict:
    """Apply the harmless renamings open_clip itself accepts (DataParallel prefix, old text layout)."""
    from open_clip.model import convert_to_custom_text_state_dict

    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    scale = state_dict.get("logit_scale")
    if isinstance(scale, torch.Tensor) and scale.ndim != model.logit_scale.ndim and scale.numel() == 1:
        state_dict = {**state_dict, "logit_scale": scale.reshape(model.logit_scale.shape)}
    return state_dict


def fill_model(model: torch.nn.Module, state_dict: dict, origin: str) -> torch.nn.Module:
    """Check then load ``state_dict`` into ``model`` (float32, eval mode)."""
    state_dict = normalise_state_dict(model, state_dict)
    check_state_dict(model, state_dict, origin)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
    return model.eval()
