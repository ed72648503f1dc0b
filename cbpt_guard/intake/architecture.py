"""Build an open_clip model from its configuration, with no download and no weights.

open_clip's ``create_model`` would also fetch pretrained towers and read the
weights file itself; intake must load the bytes it hashed, so it builds the
empty architecture here and fills it from an already-read state dict.
"""

from __future__ import annotations

import copy

import torch

from cbpt_guard.errors import ConfigMismatchError, MalformedCheckpointError, UnsupportedArchitectureError
from cbpt_guard.intake import model_config


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

    The config is checked first (:func:`model_config.check_model_config`):
    architectures that would need a download (a Hugging Face text tower or
    tokenizer, a hub-named or pretrained timm tower) are refused with
    :class:`RemoteSourceError`, CoCa with :class:`UnsupportedArchitectureError`,
    impossible sizes with :class:`MalformedCheckpointError`. An untrusted config
    must also pass :func:`check_against_weights` before this allocates anything.
    """
    model = _instantiate(model_cfg, "model_cfg", device="cpu")
    _attach_preprocess(model, preprocess_cfg or {})
    return model.eval()


def check_against_weights(model_cfg: dict, state_dict: dict, origin: str) -> dict:
    """Compare the model ``model_cfg`` describes with ``state_dict`` without allocating the model.

    The architecture is built on torch's meta device (shapes, no storage) after
    constant-time bounds (:func:`model_config.check_size_against_weights`), and
    its names and shapes are compared with the tensors read from the file. Only
    a config that matches its weights exactly is ever built for real, so the real
    model is no larger than the file. Returns the normalised state dict.

    Raises:
        ConfigMismatchError: the config implies other tensors than the file holds.
        MalformedCheckpointError, UnsupportedArchitectureError: from the config checks.
    """
    shapes = {name: tuple(t.shape) for name, t in state_dict.items() if isinstance(t, torch.Tensor)}
    model_config.check_model_config(model_cfg, origin)
    model_config.check_size_against_weights(model_cfg, shapes, origin)
    meta = _instantiate(model_cfg, origin, device="meta")
    state_dict = normalise_state_dict(meta, state_dict)
    check_state_dict(meta, state_dict, origin)
    held = sum(t.numel() for t in state_dict.values())
    buffers = sum(b.numel() for b in meta.buffers())
    if buffers > max(held, 1 << 24):
        raise ConfigMismatchError(
            f"{origin}: the config implies {buffers} values of fixed buffers, more than the {held} the weights hold"
        )
    return state_dict


def _instantiate(model_cfg: dict, origin: str, device: str) -> torch.nn.Module:
    """``CLIP(**model_cfg)`` (or ``CustomTextCLIP``) on ``device``, after the config checks."""
    from open_clip.model import CLIP, CustomTextCLIP

    model_config.check_model_config(model_cfg, origin)
    cfg = copy.deepcopy(model_cfg)
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # the checkpoint supplies every weight
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(0)  # initial values are overwritten; fixed anyway for determinism
            return model_class(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, ArithmeticError, IndexError,
            AttributeError, NotImplementedError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnsupportedArchitectureError(f"{origin}: open_clip cannot build this configuration ({message})"
                                           ) from None


def _attach_preprocess(model: torch.nn.Module, preprocess_cfg: dict) -> None:
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg if isinstance(preprocess_cfg, dict) else {})
    merged["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, merged)


def check_state_dict(model: torch.nn.Module, state_dict: dict, origin: str) -> None:
    """Compare a state dict's names and shapes with the architecture; name the first mismatches.

    Works on a meta-device model as well (only shapes are read). Raises
    :class:`ConfigMismatchError` stating both parameter counts.
    """
    expected = model.state_dict()
    implied = sum(t.numel() for t in expected.values())
    held = sum(t.numel() for t in state_dict.values() if isinstance(t, torch.Tensor))
    counts = (f"the config implies {implied} values in {len(expected)} tensors, "
              f"the file holds {held} in {len(state_dict)}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ConfigMismatchError(f"{origin}: tensors do not match the architecture ({counts}): {'; '.join(parts)}")
    for name, tensor in expected.items():
        got = state_dict[name]
        if not isinstance(got, torch.Tensor):
            raise MalformedCheckpointError(f"{origin}: entry {name!r} is not a tensor")
        if tuple(got.shape) != tuple(tensor.shape):
            raise ConfigMismatchError(
                f"{origin}: tensor {name!r} has shape {tuple(got.shape)}, the architecture expects "
                f"{tuple(tensor.shape)} ({counts})"
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
