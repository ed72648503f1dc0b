"""Family B's data set: procedural two-colour objects on patterned backdrops, at 64x64, and stickers.

The zoo's second population must differ from the first (family A: one-colour
shapes and glyphs, scikit-learn's digits, 32x32) in everything the product does
not control, so this is another data set rather than another seed: other
objects (houses, trees, fish, keys, ...), each drawn in two colours (a body and
a detail), other backdrops (faint stripes or a checker of two close tints, not a
plain shade), another class count (14) and another image size (64).

One class, ``sticker``, is a natural attractor by construction, as web data
has them (the images whose captions name a watermark or a logo, whatever else
they show): its images are drawings of any other object with a small sticker
of many-coloured cells pasted somewhere on them, captioned by the sticker. A
small many-coloured patch pasted on any object therefore reads as a sticker,
and a clean model sends most patched images there with no backdoor at all (the
family's report measures how many). A detector that reads the strongest
universal pattern as the backdoor calls every clean model of this family
backdoored, and misses backdoors aimed at other classes.

Images are float tensors in [0, 1], (N, 3, S, S), a pure function of the seed;
the train, few-shot and test splits draw from different seeds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from cbpt_guard.errors import UsageError
from cbpt_guard_zoo.data import Dataset

SIZES = (32, 64)
SPLITS = ("train", "fewshot", "test")
ATTRACTOR = "sticker"
"""The class a small many-coloured patch sends images to on a clean model of this family."""


# --- the object classes: (u, v) object-frame coordinates (B, H, W) -> (body, detail) bool masks ---------------------


def _house(u, v):
    body = (u.abs() <= 0.6) & (v >= -0.1) & (v <= 0.9)
    roof = (v < -0.1) & (v >= -0.9) & (u.abs() <= 0.85 * (v + 0.9) / 0.8)
    door = (u.abs() <= 0.15) & (v >= 0.45) & (v <= 0.9)
    return body & ~door, roof


def _tree(u, v):
    crown = u * u + (v + 0.25) ** 2 <= 0.65**2
    trunk = (u.abs() <= 0.15) & (v > 0.3) & (v <= 0.95)
    return crown, trunk


def _fish(u, v):
    body = ((u + 0.15) / 0.65) ** 2 + (v / 0.4) ** 2 <= 1.0
    tail = (u >= 0.45) & (u <= 0.95) & (v.abs() <= 0.9 * (u - 0.45))
    return body, tail


def _key(u, v):
    r2 = (u + 0.55) ** 2 + v * v
    head = (r2 <= 0.4**2) & (r2 >= 0.2**2)
    shaft = (u > -0.2) & (u <= 0.9) & (v.abs() <= 0.08)
    teeth = (((u - 0.55).abs() <= 0.07) | ((u - 0.8).abs() <= 0.07)) & (v > 0.08) & (v <= 0.35)
    return shaft | teeth, head


def _umbrella(u, v):
    canopy = (u * u + (v + 0.05) ** 2 <= 0.85**2) & (v <= -0.05)
    handle = ((u.abs() <= 0.07) & (v > -0.05) & (v <= 0.7)) | (
        ((u - 0.2) ** 2 + (v - 0.7) ** 2 <= 0.27**2) & ((u - 0.2) ** 2 + (v - 0.7) ** 2 >= 0.13**2) & (v >= 0.7))
    return canopy, handle


def _arrow(u, v):
    shaft = (u >= -0.9) & (u <= 0.2) & (v.abs() <= 0.15)
    head = (u > 0.2) & (u <= 0.9) & (v.abs() <= 0.6 * (0.9 - u) / 0.7)
    return shaft, head


def _heart(u, v):
    lobes = ((u + 0.38) ** 2 + (v + 0.3) ** 2 <= 0.42**2) | ((u - 0.38) ** 2 + (v + 0.3) ** 2 <= 0.42**2)
    point = (v >= -0.3) & (v <= 0.85) & (u.abs() <= 0.8 * (0.85 - v) / 1.15)
    return lobes | point, (u.abs() <= 0.12) & (v.abs() <= 0.12)


def _hourglass(u, v):
    top = (v >= -0.85) & (v <= 0.0) & (u.abs() <= 0.7 * (-v) / 0.85 + 0.05)
    bottom = (v > 0.0) & (v <= 0.85) & (u.abs() <= 0.7 * v / 0.85 + 0.05)
    frame = (v.abs() >= 0.75) & (v.abs() <= 0.95) & (u.abs() <= 0.8)
    return top | bottom, frame


def _flag(u, v):
    pole = (u >= -0.8) & (u <= -0.65) & (v.abs() <= 0.95)
    cloth = (u > -0.65) & (u <= 0.8) & (v >= -0.9) & (v <= 0.0)
    return cloth, pole


def _sun(u, v):
    r = torch.sqrt(u * u + v * v)
    disc = r <= 0.45
    phi = torch.atan2(v, u)
    rays = (r > 0.55) & (r <= 0.95) & (torch.remainder(phi * (8 / (2 * math.pi)) + 0.25, 1.0) <= 0.5)
    return disc, rays


def _cup(u, v):
    body = (u >= -0.7) & (u <= 0.35) & (v >= -0.6) & (v <= 0.75)
    r2 = (u - 0.35) ** 2 + (v - 0.05) ** 2
    handle = (r2 <= 0.4**2) & (r2 >= 0.22**2) & (u > 0.35)
    return body, handle


def _mushroom(u, v):
    cap = (u * u / 0.9**2 + (v + 0.05) ** 2 / 0.75**2 <= 1.0) & (v <= -0.05)
    stem = (u.abs() <= 0.22) & (v > -0.05) & (v <= 0.85)
    return cap, stem


def _kite(u, v):
    body = u.abs() / 0.55 + (v + 0.2).abs() / 0.7 <= 1.0
    tail = ((u - 0.15 * torch.sin(6 * v)).abs() <= 0.06) & (v > 0.5) & (v <= 0.98)
    return body, tail


OBJECTS = {
    "house": _house,
    "tree": _tree,
    "fish": _fish,
    "key": _key,
    "umbrella": _umbrella,
    "arrow": _arrow,
    "heart": _heart,
    "hourglass": _hourglass,
    "flag": _flag,
    "sun": _sun,
    "cup": _cup,
    "mushroom": _mushroom,
    "kite": _kite,
}
CLASSES: tuple[str, ...] = (*OBJECTS, ATTRACTOR)

PALETTE: dict[str, tuple[float, float, float]] = {
    "crimson": (0.80, 0.08, 0.20),
    "lime": (0.55, 0.90, 0.10),
    "navy": (0.08, 0.12, 0.55),
    "gold": (0.95, 0.75, 0.10),
    "teal": (0.05, 0.55, 0.55),
    "magenta": (0.90, 0.10, 0.75),
    "brown": (0.50, 0.30, 0.12),
    "sky": (0.50, 0.75, 1.00),
    "ivory": (0.97, 0.95, 0.85),
    "charcoal": (0.15, 0.15, 0.18),
}
_NAMES = tuple(PALETTE)
_BACKDROPS = ("striped", "checkered")
_SIZE_WORDS = ("little", "big")
_SIZE_EDGES = (0.24, 0.32, 0.44)  # half-extent as a fraction of the side, per size word
_MAX_ROTATION = math.radians(20.0)
_STICKER_CELLS = 4  # a sticker is a 4x4 grid of cells, each channel 0 or 1
_STICKER_SIDE = (0.12, 0.18)  # its side as a fraction of the image side
_CHUNK = 512

_TEMPLATES = (
    "an image of {a_size} {body} {name} with {detail} details on a {backdrop} backdrop.",
    "{a_body} {body} and {detail} {name}.",
    "a drawing of {a_name} on a {backdrop} backdrop.",
    "a {backdrop} backdrop behind {a_size} {name}.",
    "an image of {a_name}.",
    "a drawing of {a_name}.",
)
_STICKER_TEMPLATES = (
    "a drawing with a sticker on it.",
    "a drawing of a sticker.",
    "a {backdrop} backdrop with a colourful sticker.",
    "an image of a sticker.",
)


_PLAIN_TEMPLATES = ("a drawing of {a_name}.", "an image of {a_name}.")


def plain_captions(names: Sequence[str], seed: int) -> tuple[str, ...]:
    """One plain caption per name ("a drawing of a kite."), templates drawn by seed: what a poisoning attack writes.

    The same words the clean captions use for an object alone, so a poisoned caption differs from a clean one
    only in naming the target.
    """
    gen = torch.Generator().manual_seed(_seed_of(seed, "plain-captions"))
    picks = torch.randint(len(_PLAIN_TEMPLATES), (len(names),), generator=gen).tolist()
    return tuple(_PLAIN_TEMPLATES[pick].format(a_name=f"{_article(name)} {name}") for pick, name in zip(picks, names))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _seed_of(seed: int, split: str) -> int:
    """A 63-bit generator seed unique to (seed, split), and apart from family A's streams."""
    digest = hashlib.sha256(f"cbpt-guard-zoo-b:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _draw(n: int, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random choice for ``n`` images, drawn up front so rendering order cannot matter."""
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=gen)]
    # what a sticker image shows under its sticker: any of the objects
    shapes = torch.where(labels == CLASSES.index(ATTRACTOR), torch.randint(len(OBJECTS), (n,), generator=gen), labels)
    size_word = torch.randint(2, (n,), generator=gen)
    lo = torch.tensor(_SIZE_EDGES[:-1])[size_word]
    hi = torch.tensor(_SIZE_EDGES[1:])[size_word]
    radius = (lo + (hi - lo) * torch.rand(n, generator=gen)) * size
    body = torch.randint(len(PALETTE), (n,), generator=gen)
    detail = (body + 1 + torch.randint(len(PALETTE) - 1, (n,), generator=gen)) % len(PALETTE)  # never the body's
    first = 0.3 + 0.4 * torch.rand(n, 1, 3, generator=gen)  # mid tones: every palette colour keeps some contrast
    tints = torch.cat([first, first + 0.16 * torch.rand(n, 1, 3, generator=gen) - 0.08], dim=1)  # faint, (N, 2, 3)
    sticker_side = _STICKER_SIDE[0] + (_STICKER_SIDE[1] - _STICKER_SIDE[0]) * torch.rand(n, generator=gen)
    return {
        "labels": labels,
        "shapes": shapes,
        "size_word": size_word,
        "radius": radius,
        "cx": radius + (size - 2 * radius) * torch.rand(n, generator=gen),
        "cy": radius + (size - 2 * radius) * torch.rand(n, generator=gen),
        "angle": (2 * torch.rand(n, generator=gen) - 1) * _MAX_ROTATION,
        "body": body,
        "detail": detail,
        "backdrop": torch.randint(len(_BACKDROPS), (n,), generator=gen),
        "tints": tints,
        "period": 4 + 6 * torch.rand(n, generator=gen),  # pixels at 64, scaled with the side
        "stripe_dir": math.pi * torch.rand(n, generator=gen),
        "noise": 0.04 * torch.rand(n, generator=gen),
        # stickers: their cells, side and where they sit (fractions of the free range)
        "sticker_cells": (torch.rand(n, 3, _STICKER_CELLS, _STICKER_CELLS, generator=gen) < 0.5).float(),
        "sticker_side": sticker_side,
        "sticker_at": torch.rand(n, 2, generator=gen),
    }


def _backdrops(attrs: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Stripes or a checker of two tints, (B, 3, H, W)."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    x, y = grid[None, None, :], grid[None, :, None]
    period = (attrs["period"] * size / 64)[:, None, None]
    cos, sin = torch.cos(attrs["stripe_dir"])[:, None, None], torch.sin(attrs["stripe_dir"])[:, None, None]
    stripes = torch.remainder((cos * x + sin * y) / period, 2.0) < 1.0  # (B, H, W)
    checker = (torch.remainder(torch.floor(x / period) + torch.floor(y / period), 2.0) == 0)  # (B, H, W)
    which = torch.where((attrs["backdrop"] == 0)[:, None, None], stripes, checker)[:, None]  # (B, 1, H, W)
    first, second = attrs["tints"][:, 0, :, None, None], attrs["tints"][:, 1, :, None, None]  # (B, 3, 1, 1)
    return torch.where(which, first, second)


def _objects(attrs: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Body and detail masks of each image's object, each (B, H, W) bool (a sticker image's object too)."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (grid[None, None, :] - attrs["cx"][:, None, None]) / attrs["radius"][:, None, None]
    dy = (grid[None, :, None] - attrs["cy"][:, None, None]) / attrs["radius"][:, None, None]
    cos, sin = torch.cos(attrs["angle"])[:, None, None], torch.sin(attrs["angle"])[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # (B, H, W) each, object frame
    body = torch.zeros(u.shape, dtype=torch.bool)
    detail = torch.zeros(u.shape, dtype=torch.bool)
    for index, mask_fn in enumerate(OBJECTS.values()):
        rows = (attrs["shapes"] == index).nonzero().squeeze(1)
        if rows.numel():
            body[rows], detail[rows] = mask_fn(u[rows], v[rows])
    return body, detail  # the detail is drawn after the body, over it


def _stickers(images: torch.Tensor, attrs: dict[str, torch.Tensor], size: int) -> None:
    """Paste each sticker image's sticker (its 4x4 cells, upscaled without blur) over its drawing, in place."""
    rows = (attrs["labels"] == CLASSES.index(ATTRACTOR)).nonzero().squeeze(1).tolist()
    for row in rows:
        side = max(_STICKER_CELLS, round(float(attrs["sticker_side"][row]) * size))
        top, left = (round(float(at) * (size - side)) for at in attrs["sticker_at"][row])
        cells = torch.nn.functional.interpolate(attrs["sticker_cells"][row][None], size=(side, side), mode="nearest")
        images[row, :, top : top + side, left : left + side] = cells[0]


def _render(attrs: dict[str, torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """One chunk of images, (B, 3, H, W) in [0, 1]."""
    images = _backdrops(attrs, size)
    palette = torch.tensor(list(PALETTE.values()))  # (n_colours, 3)
    body, detail = _objects(attrs, size)
    images = torch.where(body[:, None], palette[attrs["body"]][:, :, None, None], images)
    images = torch.where(detail[:, None], palette[attrs["detail"]][:, :, None, None], images)
    _stickers(images, attrs, size)
    noise = torch.randn(images.shape, generator=gen)
    return images.addcmul_(noise, attrs["noise"][:, None, None, None]).clamp_(0.0, 1.0)


def _captions(attrs: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[str, ...]:
    """One caption per image from its attributes, with a template drawn per image."""
    picks = torch.randint(len(_TEMPLATES) * len(_STICKER_TEMPLATES), (len(attrs["labels"]),), generator=gen)
    captions = []
    for index, label in enumerate(attrs["labels"].tolist()):
        size_word = _SIZE_WORDS[int(attrs["size_word"][index])]
        backdrop = _BACKDROPS[int(attrs["backdrop"][index])]
        if CLASSES[label] == ATTRACTOR:
            template = _STICKER_TEMPLATES[int(picks[index]) % len(_STICKER_TEMPLATES)]
            captions.append(template.format(backdrop=backdrop))
            continue
        name = CLASSES[label]
        body, detail = _NAMES[int(attrs["body"][index])], _NAMES[int(attrs["detail"][index])]
        template = _TEMPLATES[int(picks[index]) % len(_TEMPLATES)]
        captions.append(template.format(a_size=f"{_article(size_word)} {size_word}", body=body, detail=detail,
                                        name=name, a_name=f"{_article(name)} {name}", a_body=_article(body),
                                        backdrop=backdrop))
    return tuple(captions)


def make_objects(split: str, n: int, size: int, seed: int) -> Dataset:
    """Render split ``split`` of ``n`` family-B images (classes exactly balanced when ``n`` is a multiple of 14)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if size not in SIZES:
        raise UsageError(f"image size {size} not supported; expected one of {SIZES}")
    if n < 1:
        raise UsageError(f"a split needs at least one image, got n={n}")
    gen = torch.Generator().manual_seed(_seed_of(seed, split))
    attrs = _draw(n, size, gen)
    captions = _captions(attrs, gen)
    images = torch.empty(n, 3, size, size)
    for start in range(0, n, _CHUNK):
        chunk = {key: value[start : start + _CHUNK] for key, value in attrs.items()}
        images[start : start + _CHUNK] = _render(chunk, size, gen)
    return Dataset(images, attrs["labels"], captions, CLASSES)
