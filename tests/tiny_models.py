"""Tiny open_clip configurations and a writer that saves them with open_clip's own API.

Real architectures (the classes open_clip builds for ViT, ModifiedResNet and
timm towers) at widths small enough to build in well under a second.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

TINY_CONFIGS: dict[str, dict] = {
    "vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": TEXT_CFG,
    },
    "resnet": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": TEXT_CFG,
    },
    "convnext": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": TEXT_CFG,
    },
}


class _NoTokenizerFiles:
    """open_clip's writer also saves an HF tokenizer; the built-in CLIP tokenizer has no files to save."""

    def save_pretrained(self, dest) -> None:
        """Nothing to write: the CLIP BPE vocabulary ships with open_clip."""


def build_tiny(family: str, seed: int = 0):
    """A randomly initialised open_clip model of the given family and its config."""
    import torch

    from cbpt_guard.intake.architecture import build_model

    config = copy.deepcopy(TINY_CONFIGS[family])
    torch.manual_seed(seed)
    model = build_model(config)
    for parameter in model.parameters():  # distinct values per seed, so loads are checkable
        parameter.data.normal_(0, 0.02)
    return model, config


def save_open_clip_dir(model, config: dict, directory: Path, serialization: str = "both",
                       classes: list[str] | None = None) -> Path:
    """Write ``model`` as an open_clip local model directory via ``open_clip.push_to_hf_hub.save_for_hf``."""
    from open_clip.push_to_hf_hub import save_for_hf

    safe = {"both": "both", "safetensors": True, "bin": False}[serialization]
    save_for_hf(model, _NoTokenizerFiles(), config, str(directory), safe_serialization=safe)
    if classes is not None:
        manifest = {"manifest_version": 1, "classes": classes, "templates": ["a photo of a {}."]}
        (directory / "cbpt_manifest.json").write_text(json.dumps(manifest))
    return directory
