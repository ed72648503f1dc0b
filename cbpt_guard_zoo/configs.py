"""The zoo's architectures: small configs of real open_clip towers, as data.

Widths are chosen so a base trains in minutes on a 2-core CPU and a model
stored in fp16 is a few MB (the 49,408-token embedding dominates, hence the
narrow text width). The context length is cut to 24 tokens: every caption the
zoo makes is shorter, and the real CLIP tokenizer pads or truncates to it.
"""

from __future__ import annotations

import copy

TEXT_CFG = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}

ZOO_CONFIGS: dict[str, dict] = {
    "vit": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
        "text_cfg": TEXT_CFG,
    },
    # For tests and quick trials: trains in seconds, still a real ViT and the real tokenizer.
    "vit-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "resnet": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": TEXT_CFG,
    },
}

# Family B (cbpt_guard_zoo/families.py): 64x64 images, another ViT width and patch size, another embedding and
# text width, and a ResNet; nothing of it is shared with family A's configs above.
TEXT_CFG_B = {"context_length": 24, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2}
ZOO_CONFIGS.update({
    "vit-b": {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 96, "patch_size": 16, "head_width": 32},
        "text_cfg": TEXT_CFG_B,
    },
    "resnet-b": {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": TEXT_CFG_B,
    },
    # For tests: family B's data and image size on a ViT that trains in seconds.
    "vit-b-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 48, "patch_size": 16, "head_width": 24},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
})

PREPROCESS_CFG = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def zoo_config(name: str) -> dict:
    """A fresh copy of the named zoo architecture's ``model_cfg``."""
    return copy.deepcopy(ZOO_CONFIGS[name])
