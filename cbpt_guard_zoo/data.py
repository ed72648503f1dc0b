"""Seeded image-caption data for the model zoo: procedural shapes, and scikit-learn's digits.

The zoo needs many small CLIP models trained on data nobody has to download, so the images
are rendered here from a seed. Each image holds one object (a shape, a glyph or a texture)
with a random colour, size, position and rotation, on a tinted, shaded background, with
pixel noise; its caption is composed from those attributes ("a photo of a small red
triangle on a dark background."). The second source is real data no one here made:
scikit-learn's bundled 8x8 handwritten digits, upscaled and tinted.

Everything is a float tensor in [0, 1] of shape (N, 3, H, W) and is a pure function of the
seed: the same seed gives identical tensors, and the train, few-shot and test splits draw
from different seeds, so they never share an image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cbpt_guard.errors import UsageError

SIZES = (32, 64)
SPLITS = ("train", "fewshot", "test")

Mask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images with their class labels and captions.

    ``images`` is float32 in [0, 1], (N, 3, H, W); ``labels`` is int64, (N,), indexing
    ``class_names``; ``captions`` holds one string per image. ``labels`` always names the
    true content of an image; a poisoned data set changes captions, never labels.
    """

    images: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        """The side of the (square) images in pixels."""
        return int(self.images.shape[-1])


# --- the object classes --------------------------------------------------------------------
# Each mask takes the object-frame coordinates (u right, v down; the object spans about
# [-1, 1]) of a batch, (B, H, W), and returns where the object is, (B, H, W) bool.
# Rotation is limited to +-30 degrees (see _draw_attributes), so square and diamond (a
# tall rhombus), or T and L, stay distinct classes rather than rotations of one another.


def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _triangle(u, v):
    # Apex at (0, -0.9), base on v = 0.7 with half-width 0.95.
    return (v <= 0.7) & (u.abs() <= 0.95 * (v + 0.9) / 1.6)


def _cross(u, v):
    arm_h = (u.abs() <= 0.9) & (v.abs() <= 0.3)
    arm_v = (v.abs() <= 0.9) & (u.abs() <= 0.3)
    return arm_h | arm_v


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _star(u, v):
    # Five points: the allowed radius falls from 1 at a point to 0.42 between points.
    phi = torch.atan2(u, -v)  # 0 points up
    t = torch.remainder(phi * (5.0 / (2.0 * math.pi)), 1.0)
    between = 2.0 * torch.minimum(t, 1.0 - t)  # 0 at a point, 1 midway
    return torch.sqrt(u * u + v * v) <= 1.0 - 0.58 * between


def _diamond(u, v):
    return u.abs() / 0.6 + v.abs() <= 1.0


def _crescent(u, v):
    bite = (u - 0.45) ** 2 + v * v > 0.75**2
    return (u * u + v * v <= 1.0) & bite


def _letter_t(u, v):
    bar = (u.abs() <= 0.9) & (v >= -0.9) & (v <= -0.5)
    stem = (u.abs() <= 0.22) & (v.abs() <= 0.9)
    return bar | stem


def _letter_l(u, v):
    stem = (u >= -0.7) & (u <= -0.3) & (v.abs() <= 0.9)
    foot = (u >= -0.7) & (u <= 0.7) & (v >= 0.5) & (v <= 0.9)
    return stem | foot


def _checkerboard(u, v):
    # A 3x3 board of cells inside the square |u|, |v| <= 0.85; five cells filled.
    inside = torch.maximum(u.abs(), v.abs()) <= 0.85
    cu = torch.floor((u + 0.85) * (3 / 1.7))
    cv = torch.floor((v + 0.85) * (3 / 1.7))
    return inside & (torch.remainder(cu + cv, 2) == 0)


def _barcode(u, v):
    # Three vertical bars with two gaps, as five equal columns.
    inside = (u.abs() <= 0.8) & (v.abs() <= 0.85)
    column = torch.floor((u + 0.8) * (5 / 1.6))
    return inside & (torch.remainder(column, 2) == 0)


SHAPES: dict[str, Mask] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "star": _star,
    "diamond": _diamond,
    "crescent": _crescent,
    "letter T": _letter_t,
    "letter L": _letter_l,
    "checkerboard": _checkerboard,
    "barcode": _barcode,
}
SHAPE_CLASSES: tuple[str, ...] = tuple(SHAPES)

# --- attributes ------------------------------------------------------------------------------

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "purple": (0.60, 0.20, 0.80),
    "cyan": (0.10, 0.85, 0.90),
    "pink": (1.00, 0.45, 0.70),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
_COLOUR_NAMES = tuple(COLOURS)
_WHITE, _BLACK = _COLOUR_NAMES.index("white"), _COLOUR_NAMES.index("black")

# Object half-extent as a fraction of the image side, per size word.
_SIZE_WORDS = ("small", "medium", "large")
_SIZE_EDGES = (0.16, 0.22, 0.29, 0.36)
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")
_MAX_ROTATION = math.radians(30.0)
_MAX_NOISE = 0.06
_MAX_GRADIENT = 0.15
_CHUNK = 1024  # images rendered at once; bounds the (B, H, W) intermediates

# The last two are plain captions naming only the object, as many web captions do. Without
# them the only plain "a photo of a circle." pairs a model ever saw would be an attacker's, and
# poisoning would turn the zero-shot prompt itself into the trigger's embedding (measured on
# the zoo: a BadCLIP-like model then classified 7% of clean circles as circles).
_SCENE_TEMPLATES = (
    "a photo of {a_size} {colour} {name} on a {bg} background.",
    "{a_colour} {colour} {name} at the {pos} of the picture.",
    "a {bg} picture with {a_size} {colour} {name}.",
    "a photo of {a_colour} {colour} {name}.",
    "a photo of {a_name}.",
    "a close-up photo of {a_name}.",
)
_CLASS_TEMPLATES = (
    "a photo of {det} {name}.",
    "a picture of {det} {name}.",
    "a close-up photo of {det} {name}.",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_word(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "centre"
    if row == 1:
        return _COLS[col]
    if col == 1:
        return _ROWS[row]
    return f"{_ROWS[row]} {_COLS[col]}"


def _split_seed(seed: int, split: str) -> int:
    """A 63-bit generator seed unique to (seed, split), so splits never share a stream."""
    digest = hashlib.sha256(f"cbpt-guard-zoo:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_request(split: str, size: int, n: int | None = None) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if size not in SIZES:
        raise UsageError(f"image size {size} not supported; expected one of {SIZES}")
    if n is not None and n < 1:
        raise UsageError(f"a split needs at least one image, got n={n}")


def class_captions(names: Sequence[str], seed: int) -> tuple[str, ...]:
    """One plain caption per entry of ``names`` ("a photo of a star."), templates drawn by seed.

    Used for the digits and for the captions a poisoning attack writes over its victims:
    digit classes take "the" ("a photo of the digit seven."), others an article.
    """
    gen = torch.Generator().manual_seed(_split_seed(seed, "class-captions"))
    picks = torch.randint(len(_CLASS_TEMPLATES), (len(names),), generator=gen).tolist()
    captions = []
    for pick, name in zip(picks, names):
        det = "the" if name.startswith("digit ") else _article(name)
        captions.append(_CLASS_TEMPLATES[pick].format(det=det, name=name))
    return tuple(captions)


# --- procedural rendering --------------------------------------------------------------------


def _draw_attributes(n: int, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random choice for ``n`` images, drawn up front so rendering order cannot matter."""
    n_cls = len(SHAPE_CLASSES)
    labels = torch.arange(n) % n_cls  # exact class balance
    labels = labels[torch.randperm(n, generator=gen)]
    size_word = torch.randint(3, (n,), generator=gen)
    lo = torch.tensor(_SIZE_EDGES[:-1])[size_word]
    hi = torch.tensor(_SIZE_EDGES[1:])[size_word]
    radius = (lo + (hi - lo) * torch.rand(n, generator=gen)) * size  # pixels
    # Centres keep the object inside the frame.
    cx = radius + (size - 2 * radius) * torch.rand(n, generator=gen)
    cy = radius + (size - 2 * radius) * torch.rand(n, generator=gen)
    colour = torch.randint(len(COLOURS), (n,), generator=gen)
    dark_bg = torch.rand(n, generator=gen) < 0.5
    dark_bg = (dark_bg | (colour == _WHITE)) & (colour != _BLACK)  # keep contrast
    bg_level = torch.where(
        dark_bg,
        0.30 * torch.rand(n, generator=gen),
        0.65 + 0.30 * torch.rand(n, generator=gen),
    )
    return {
        "labels": labels,
        "size_word": size_word,
        "radius": radius,
        "cx": cx,
        "cy": cy,
        "angle": (2 * torch.rand(n, generator=gen) - 1) * _MAX_ROTATION,
        "colour": colour,
        "colour_jitter": 0.08 * (2 * torch.rand(n, 3, generator=gen) - 1),
        "dark_bg": dark_bg,
        "bg_rgb": bg_level[:, None] + 0.08 * (2 * torch.rand(n, 3, generator=gen) - 1),
        "grad_amp": _MAX_GRADIENT * torch.rand(n, generator=gen),
        "grad_dir": 2 * math.pi * torch.rand(n, generator=gen),
        "noise": _MAX_NOISE * torch.rand(n, generator=gen),
    }


def _object_masks(attrs: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Where each image's object lies, (B, H, W) float, from its class, pose and size."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    dx = (grid[None, None, :] - attrs["cx"][:, None, None]) / attrs["radius"][:, None, None]
    dy = (grid[None, :, None] - attrs["cy"][:, None, None]) / attrs["radius"][:, None, None]
    cos = torch.cos(attrs["angle"])[:, None, None]
    sin = torch.sin(attrs["angle"])[:, None, None]
    u = cos * dx + sin * dy  # (B, H, W), object frame
    v = -sin * dx + cos * dy  # (B, H, W)
    masks = torch.zeros(u.shape, dtype=torch.bool)
    for index, mask_fn in enumerate(SHAPES.values()):
        rows = (attrs["labels"] == index).nonzero().squeeze(1)
        if rows.numel():
            masks[rows] = mask_fn(u[rows], v[rows])
    return masks.to(torch.float32)


def _render(attrs: dict[str, torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """Render one chunk of images, (B, 3, H, W) in [0, 1]."""
    b = attrs["labels"].shape[0]
    ramp = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    gx = torch.cos(attrs["grad_dir"])[:, None, None] * ramp[None, None, :]
    gy = torch.sin(attrs["grad_dir"])[:, None, None] * ramp[None, :, None]
    shade = attrs["grad_amp"][:, None, None] * (gx + gy)  # (B, H, W)
    background = attrs["bg_rgb"][:, :, None, None] + shade[:, None]  # (B, 3, H, W)
    palette = torch.tensor(list(COLOURS.values()))  # (n_colours, 3)
    rgb = palette[attrs["colour"]] + attrs["colour_jitter"]  # (B, 3)
    mask = _object_masks(attrs, size)[:, None]  # (B, 1, H, W)
    # In-place from here on: at 64x64 these (B, 3, H, W) passes dominate the render time.
    images = background.lerp_(rgb[:, :, None, None].expand_as(background), mask)
    noise = torch.randn(b, 3, size, size, generator=gen)
    return images.addcmul_(noise, attrs["noise"][:, None, None, None]).clamp_(0.0, 1.0)


def _scene_captions(attrs: dict[str, torch.Tensor], size: int, gen: torch.Generator):
    """One caption per image, composed from its attributes with a randomly drawn template."""
    n = attrs["labels"].shape[0]
    templates = torch.randint(len(_SCENE_TEMPLATES), (n,), generator=gen).tolist()
    rows = torch.clamp((attrs["cy"] * 3 / size).long(), 0, 2).tolist()
    cols = torch.clamp((attrs["cx"] * 3 / size).long(), 0, 2).tolist()
    columns = zip(
        templates,
        attrs["labels"].tolist(),
        attrs["size_word"].tolist(),
        attrs["colour"].tolist(),
        attrs["dark_bg"].tolist(),
        rows,
        cols,
    )
    captions = []
    for template, label, size_word, colour, dark, row, col in columns:
        size_name, colour_name = _SIZE_WORDS[size_word], _COLOUR_NAMES[colour]
        fields = {
            "a_size": f"{_article(size_name)} {size_name}",
            "a_colour": _article(colour_name),
            "colour": colour_name,
            "name": SHAPE_CLASSES[label],
            "a_name": f"{_article(SHAPE_CLASSES[label])} {SHAPE_CLASSES[label]}",
            "bg": "dark" if dark else "light",
            "pos": _position_word(row, col),
        }
        captions.append(_SCENE_TEMPLATES[template].format(**fields))
    return tuple(captions)


def make_split(name: str, n: int, size: int, seed: int) -> Dataset:
    """Render split ``name`` ("train", "fewshot" or "test") of ``n`` procedural images.

    Classes are exactly balanced when ``n`` is a multiple of the class count (a few-shot split
    of ``k * len(SHAPE_CLASSES)`` images holds ``k`` shots per class). The same
    (name, seed) renders the same scenes at every ``size``.
    """
    _check_request(name, size, n)
    gen = torch.Generator().manual_seed(_split_seed(seed, name))
    attrs = _draw_attributes(n, size, gen)
    # Attributes are in pixels of the requested size; captions use fractions of it.
    captions = _scene_captions(attrs, size, gen)
    images = torch.empty(n, 3, size, size)
    for start in range(0, n, _CHUNK):
        chunk = {key: value[start : start + _CHUNK] for key, value in attrs.items()}
        images[start : start + _CHUNK] = _render(chunk, size, gen)
    return Dataset(images, attrs["labels"], captions, SHAPE_CLASSES)


# --- scikit-learn digits ---------------------------------------------------------------------

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CLASSES: tuple[str, ...] = tuple(f"digit {word}" for word in DIGIT_WORDS)
_DIGIT_FEWSHOT_PER_CLASS = 16
_DIGIT_TEST_PER_CLASS = 54
_DIGIT_PARTITION_SEED = 20240617  # fixed: the splits of the real data never depend on `seed`


def _digit_indices(targets: torch.Tensor, split: str) -> torch.Tensor:
    """The sample indices of ``split``: per class, 16 few-shot, 54 test, the rest train."""
    gen = torch.Generator().manual_seed(_DIGIT_PARTITION_SEED)
    bounds = {
        "fewshot": (0, _DIGIT_FEWSHOT_PER_CLASS),
        "test": (_DIGIT_FEWSHOT_PER_CLASS, _DIGIT_FEWSHOT_PER_CLASS + _DIGIT_TEST_PER_CLASS),
        "train": (_DIGIT_FEWSHOT_PER_CLASS + _DIGIT_TEST_PER_CLASS, None),
    }[split]
    picked = []
    for digit in range(10):
        members = (targets == digit).nonzero().squeeze(1)
        members = members[torch.randperm(members.numel(), generator=gen)]
        picked.append(members[bounds[0] : bounds[1]])
    return torch.sort(torch.cat(picked)).values


def make_digits(size: int, seed: int, split: str) -> Dataset:
    """Split ``split`` of scikit-learn's handwritten digits as tinted colour images.

    The 8x8 greyscale digits (1,797 in all) are upscaled bilinearly to ``size``, and each is
    drawn as ink of a random colour on a random dark background. Which samples fall in which
    split is fixed (16 per class few-shot, 54 per class test, the rest train), so splits are
    disjoint for any seeds; ``seed`` draws only the colours and the caption templates.
    """
    from sklearn.datasets import load_digits  # ships inside scikit-learn; no download

    _check_request(split, size)
    bunch = load_digits()
    targets = torch.as_tensor(bunch.target, dtype=torch.int64)
    keep = _digit_indices(targets, split)
    ink = torch.as_tensor(bunch.images, dtype=torch.float32)[keep] / 16.0  # (N, 8, 8)
    ink = F.interpolate(ink[:, None], size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(_split_seed(seed, f"digits-{split}"))
    n = keep.numel()
    tint = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=gen)  # (N, 3, 1, 1)
    background = 0.25 * torch.rand(n, 3, 1, 1, generator=gen)
    images = (background + ink.clamp(0.0, 1.0) * (tint - background)).clamp(0.0, 1.0)
    labels = targets[keep]
    captions = class_captions([DIGIT_CLASSES[label] for label in labels.tolist()], seed)
    return Dataset(images.contiguous(), labels, captions, DIGIT_CLASSES)

