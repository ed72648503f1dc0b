"""Write a labelled ImageFolder from the zoo's data: the few-shot data a defender brings to ``check --data``.

Subfolders are named after the zoo's classes (shapes, then digits), so the
folder works with every zoo model and example checkpoint. Images come from the
held-out test split (shapes rendered from ``seed``; scikit-learn's digits from
their fixed test partition), never from what the models were trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cbpt_guard.errors import UsageError
from cbpt_guard_zoo import data as data_lib, objects

MAX_PER_CLASS = 54
"""The digits' test partition holds 54 images per class."""


def write_image_folder(out: str | Path, *, per_class: int, size: int = 32, seed: int = 0, family: str = "a") -> int:
    """Write ``per_class`` PNGs per class under ``out/<class name>/``; returns the number written.

    Deterministic for (per_class, size, seed, family). Refuses a non-empty
    ``out`` so that images of two runs never mix. Family A's images are its
    shapes and digits, family B's its objects (both from their test splits).
    """
    from PIL import Image

    if not 1 <= per_class <= MAX_PER_CLASS:
        raise UsageError(f"per_class must lie in [1, {MAX_PER_CLASS}], got {per_class}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root}: not empty; choose a new folder")
    if family == "b":  # classes exactly balanced: per_class of each in 14 * per_class images
        sources = ((objects.make_objects("test", per_class * len(objects.CLASSES), size, seed), objects.CLASSES),)
    else:
        n_shapes = len(data_lib.SHAPE_CLASSES)
        # 4x oversampling: shape labels are drawn at random, and every class must reach per_class
        shapes = data_lib.make_split("test", 4 * per_class * n_shapes, size, seed)
        digits = data_lib.make_digits(size, seed, "test")
        sources = ((shapes, data_lib.SHAPE_CLASSES), (digits, data_lib.DIGIT_CLASSES))
    written = 0
    for dataset, names in sources:
        for label, name in enumerate(names):
            members = torch.nonzero(dataset.labels == label).flatten()[:per_class]
            if len(members) < per_class:
                raise UsageError(f"only {len(members)} test images of {name!r}; lower per_class")
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            for rank, index in enumerate(members.tolist()):
                pixels = (dataset.images[index].clamp(0, 1) * 255).round().to(torch.uint8)  # (3, S, S)
                Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{rank:03d}.png")
                written += 1
    return written
