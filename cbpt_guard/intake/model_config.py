"""Validate an untrusted open_clip ``model_cfg`` before anything is built from it.

A config is data written by the checkpoint's author. Handed to open_clip as it
is, it can make open_clip or timm reach a model hub (a tower named
``hf-hub:...``, a pretrained flag, a Hugging Face text tower), make the gate
allocate without bound (``layers: 100000``), or crash inside a constructor
(``width: 0``). This module refuses all three with typed errors, from the
config alone (:func:`check_model_config`) and from the tensor shapes the
weights file declares (:func:`check_size_against_weights`), so that no
constructor ever sees a config that could do any of them. Pure Python: no
torch, no open_clip, nothing is built here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from cbpt_guard.errors import (
    ConfigMismatchError,
    MalformedCheckpointError,
    RemoteSourceError,
    UnsupportedArchitectureError,
)

__all__ = ["MAX_CONFIG_INT", "check_model_config", "check_preprocess_config", "check_size_against_weights",
           "declared_layers", "is_finite_number", "short"]

MAX_CONFIG_INT = 2**31 - 1
"""No size in a model config is larger; beyond it torch's shape arithmetic overflows."""
MAX_CONFIG_NODES = 10_000
MAX_STRING_CHARS = 1024

# Values that name somewhere else to fetch from: open_clip's and timm's source prefixes, any URL.
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "timm/")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# Keys whose presence (with any value but null) asks for a download or a file outside the config.
_SOURCE_KEYS = {
    "hf_model_name": "a Hugging Face text tower",
    "hf_tokenizer_name": "a Hugging Face tokenizer",
    "hf_hub_id": "a Hugging Face hub repository",
    "url": "a URL",
    "file": "a weights file",
    "checkpoint_path": "a weights file",
    "cache_dir": "a download cache",
    "pretrained_cfg": "a pretrained configuration",
    "pretrained_cfg_overlay": "a pretrained configuration",
}
# A timm architecture, optionally with a pretrained tag: no prefix, no path, no URL.
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]{1,128}(?:\.[A-Za-z0-9_]{1,128})?")
# open_clip's defaults for the sizes that decide how many layers get built.
_DEFAULT_VISION_LAYERS = 12
_DEFAULT_TEXT_LAYERS = 12


def check_model_config(model_cfg: object, origin: str) -> None:
    """Refuse a config that would download, that is malformed, or that open_clip would crash on.

    Raises:
        RemoteSourceError: a value names a hub, a URL or pretrained weights (exit 3).
        UnsupportedArchitectureError: an architecture the gate does not build (CoCa, an unknown timm model).
        MalformedCheckpointError: a missing tower, a size that is not a positive
            integer (or is absurdly large), a number that is not finite.
    """
    if not isinstance(model_cfg, Mapping) or not isinstance(model_cfg.get("vision_cfg"), Mapping) or not isinstance(
        model_cfg.get("text_cfg"), Mapping
    ):
        raise MalformedCheckpointError(f"{origin}: model_cfg must hold 'embed_dim', 'vision_cfg' and 'text_cfg'")
    _walk(model_cfg, origin)
    if "multimodal_cfg" in model_cfg:
        raise UnsupportedArchitectureError(f"{origin}: CoCa (captioning) models are not supported")
    _positive(model_cfg, "embed_dim", origin, "model_cfg", required=True)
    _check_vision(model_cfg["vision_cfg"], origin)
    _check_text(model_cfg["text_cfg"], origin)


_PREPROCESS_CHOICES = {
    "mode": ("RGB",),
    "interpolation": ("bicubic", "bilinear", "nearest", "random"),
    "resize_mode": ("shortest", "longest", "squash"),
}


def check_preprocess_config(preprocess_cfg: object, origin: str) -> None:
    """Refuse a ``preprocess_cfg`` whose values the classifier could not use (it reads mean and std as 3 floats).

    Keys open_clip does not know are ignored, as open_clip ignores them;
    ``size`` is ignored too, since the vision tower's own image size wins.
    """
    if preprocess_cfg is None:
        return
    if not isinstance(preprocess_cfg, Mapping):
        raise MalformedCheckpointError(f"{origin}: preprocess_cfg must be an object")
    for key in ("mean", "std"):
        value = preprocess_cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_finite_number(v) for v in value):
            raise MalformedCheckpointError(
                f"{origin}: preprocess_cfg.{key} must be 3 finite numbers, got {short(value)}")
        if key == "std" and min(value) <= 0:
            raise MalformedCheckpointError(f"{origin}: preprocess_cfg.std must be positive, got {short(value)}")
    for key, choices in _PREPROCESS_CHOICES.items():
        value = preprocess_cfg.get(key)
        if value is not None and (not isinstance(value, str) or value not in choices):
            raise MalformedCheckpointError(f"{origin}: preprocess_cfg.{key} must be one of {', '.join(choices)}, "
                                           f"got {short(value)}")
    fill = preprocess_cfg.get("fill_color")
    if fill is not None and not (isinstance(fill, int) and not isinstance(fill, bool) and 0 <= fill <= 255):
        raise MalformedCheckpointError(f"{origin}: preprocess_cfg.fill_color must be an integer 0-255")


def is_finite_number(value: object) -> bool:
    """An int or float that converts to a finite float (JSON allows NaN and integers of any size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def declared_layers(model_cfg: Mapping) -> int:
    """How many residual layers the config asks open_clip to build (timm towers bring their own depth)."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    total = text.get("layers", _DEFAULT_TEXT_LAYERS)
    if vision.get("timm_model_name") is None:
        layers = vision.get("layers", _DEFAULT_VISION_LAYERS)
        total += sum(layers) if isinstance(layers, (list, tuple)) else layers
    return int(total)


def check_size_against_weights(model_cfg: Mapping, shapes: Mapping[str, tuple[int, ...]], origin: str) -> None:
    """Refuse, in constant time, a (checked) config far bigger than the weights file it must fill.

    Every residual layer (transformer block or ResNet bottleneck) holds
    several tensors, so a config declaring more layers than the file has
    tensors cannot match it; and a ViT's patch grid times its width is the size
    of its positional embedding, which the file must hold too (or which a
    fixed sin-cos embedding would compute eagerly). These bounds keep the
    meta-device build that compares names and shapes exactly, which costs about
    a millisecond per layer, short; the exact comparison happens there.
    """
    tensors = len(shapes)
    elements = sum(math.prod(shape) for shape in shapes.values())
    layers = declared_layers(model_cfg)
    if layers > tensors:
        raise ConfigMismatchError(
            f"{origin}: the config declares {layers} layers but the weights file holds only {tensors} tensors"
        )
    vision = model_cfg["vision_cfg"]
    if vision.get("timm_model_name") is None and not isinstance(vision.get("layers", 1), (list, tuple)):
        grid = math.prod(s // p for s, p in zip(_pair(vision.get("image_size", 224)),
                                                 _pair(vision.get("patch_size", 16))))
        positions = grid * vision.get("width", 768)
        if positions > elements:
            raise ConfigMismatchError(
                f"{origin}: the config's positional embedding alone has {positions} values, more than the "
                f"{elements} the weights file holds"
            )


# --- the walk over every value ------------------------------------------------------------------


def _walk(model_cfg: Mapping, origin: str) -> None:
    """Bound every number and refuse every value or key that names a remote source (iterative: no recursion)."""
    stack: list[tuple[str, object]] = [("model_cfg", model_cfg)]
    seen = 0
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise MalformedCheckpointError(f"{origin}: model_cfg has more than {MAX_CONFIG_NODES} values")
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_key(str(key), item, f"{where}.{key}", origin)
                stack.append((f"{where}.{key}", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, where, origin)
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if abs(value) > MAX_CONFIG_INT:
                raise MalformedCheckpointError(f"{origin}: {where} is an integer beyond {MAX_CONFIG_INT}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise MalformedCheckpointError(f"{origin}: {where} is {value}, not a finite number")
        else:
            raise MalformedCheckpointError(f"{origin}: {where} has a value of type {type(value).__name__}")


def _check_key(key: str, value: object, where: str, origin: str) -> None:
    if value is None or value is False:
        return
    if key in _SOURCE_KEYS:
        raise RemoteSourceError(
            f"{origin}: {where} names {_SOURCE_KEYS[key]} ({short(value)}), which would need a download; "
            "cbpt-guard never downloads"
        )
    if "pretrained" in key.lower():
        raise RemoteSourceError(
            f"{origin}: {where} asks for pretrained weights ({short(value)}), which would need a download; "
            "the checkpoint must supply every weight"
        )


def _check_string(value: str, where: str, origin: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise MalformedCheckpointError(f"{origin}: {where} is a string of {len(value)} characters")
    lowered = value.strip().lower()
    if lowered.startswith(_REMOTE_PREFIXES) or _URL.search(value):
        raise RemoteSourceError(
            f"{origin}: {where} names a remote source ({short(value)}); cbpt-guard never downloads"
        )


def short(value: object) -> str:
    """A value's repr cut to 80 characters, for an error message that must stay short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the towers ---------------------------------------------------------------------------------


def _check_vision(vision: Mapping, origin: str) -> None:
    where = "vision_cfg"
    _size(vision, "image_size", origin, where)
    timm_name = vision.get("timm_model_name")
    if timm_name is not None:
        _check_timm_name(timm_name, origin)
        return
    layers = vision.get("layers", _DEFAULT_VISION_LAYERS)
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: four stages
        if len(layers) != 4 or not all(_is_positive_int(n) for n in layers):
            raise MalformedCheckpointError(f"{origin}: {where}.layers must be one positive integer or four, "
                                           f"got {short(layers)}")
        _positive(vision, "width", origin, where)
        return
    _positive(vision, "layers", origin, where)
    width = _positive(vision, "width", origin, where) or 768
    head_width = _positive(vision, "head_width", origin, where) or 64
    _size(vision, "patch_size", origin, where)
    _positive_number(vision, "mlp_ratio", origin, where)
    if head_width > width or width % (width // head_width):
        raise MalformedCheckpointError(
            f"{origin}: {where}.width {width} cannot be split into heads of head_width {head_width}"
        )
    if any(p > s for s, p in zip(_pair(vision.get("image_size", 224)), _pair(vision.get("patch_size", 16)))):
        raise MalformedCheckpointError(f"{origin}: {where}.patch_size is larger than the image")
    if vision.get("attentional_pool"):
        _positive(vision, "attn_pooler_queries", origin, where)
        _positive(vision, "attn_pooler_heads", origin, where)


def _check_text(text: Mapping, origin: str) -> None:
    where = "text_cfg"
    for key in ("context_length", "vocab_size", "layers"):
        _positive(text, key, origin, where)
    width = _positive(text, "width", origin, where) or 512
    heads = _positive(text, "heads", origin, where) or 8
    _positive_number(text, "mlp_ratio", origin, where)
    if width % heads:
        raise MalformedCheckpointError(f"{origin}: {where}.width {width} is not a multiple of {heads} heads")


def _check_timm_name(name: object, origin: str) -> None:
    """A timm architecture timm knows locally; a hub prefix or a path was refused by the walk already."""
    if not isinstance(name, str) or not _TIMM_NAME.fullmatch(name):
        raise UnsupportedArchitectureError(
            f"{origin}: vision_cfg.timm_model_name {short(name)} is not a timm architecture name"
        )
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise UnsupportedArchitectureError(f"{origin}: timm has no architecture {name!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CONFIG_INT


def _positive(sub: Mapping, key: str, origin: str, where: str, required: bool = False) -> int | None:
    """``sub[key]`` as a positive integer; None when absent (open_clip's default applies)."""
    if key not in sub and not required:
        return None
    value = sub.get(key)
    if not _is_positive_int(value):
        raise MalformedCheckpointError(f"{origin}: {where}.{key} must be a positive integer, got {short(value)}")
    return value


def _positive_number(sub: Mapping, key: str, origin: str, where: str) -> None:
    if key not in sub:
        return
    value = sub[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1024:
        raise MalformedCheckpointError(f"{origin}: {where}.{key} must be a number in (0, 1024], got {short(value)}")


def _size(sub: Mapping, key: str, origin: str, where: str) -> None:
    """An image or patch side: a positive integer or a pair of them."""
    if key not in sub:
        return
    value = sub[key]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_positive_int(v) for v in value):
        return
    if not _is_positive_int(value):
        raise MalformedCheckpointError(
            f"{origin}: {where}.{key} must be a positive integer or a pair of them, got {short(value)}"
        )


def _pair(value: object) -> tuple[int, int]:
    return (value[0], value[1]) if isinstance(value, (list, tuple)) else (value, value)
