"""The images detection and purification look at, in three tiers (METHOD.md section 2).

1. zero-data: :func:`procedural_probes`, made here from a seed. They are generic
   scenes (random objects on plain or shaded backgrounds, dead-leaves occlusion
   patterns, smooth colour noise) under random exposure, not drawn from any data
   set a model was trained on, and deliberately diverse: probes that all look
   alike to a model (high mean pairwise cosine) make every trigger look like a
   collapse. Measured on the zoo: a real BadNets trigger moved 73% of object-on-
   background probes to its target but only 31-34% of noise or stripe probes, and
   inversion on object scenes recovered the true target where a noise-heavy mix
   found a universal texture patch instead; hence the mix is mostly scenes.
2. unlabelled: :func:`folder_probes`, the user's own images without labels.
3. few-shot: :func:`fewshot_folder`, an ImageFolder (one subfolder per class).

All return pixels in [0, 1], (N, 3, S, S), resized to the model's input side;
normalisation is the classifier's job, after any trigger is stamped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cbpt_guard.errors import ClassListError, NothingScannableError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


@dataclass(frozen=True)
class ProbeSet:
    """Probe pixels, optional labels (few-shot tier), their tier and what was skipped."""

    images: torch.Tensor
    tier: str
    labels: torch.Tensor | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    source: str = "procedural"


def _smooth_noise(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Colour noise at a random spatial scale per image. (n, 3, size, size)."""
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        cells = int(torch.randint(2, max(3, size // 2), (1,), generator=gen))
        coarse = torch.rand(1, 3, cells, cells, generator=gen)
        out[i] = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return out.clamp(0, 1)


def _clutter(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random ellipses and rectangles of random colours over a random background. (n, 3, size, size)."""
    axis = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # (size, size)
    images = torch.rand(n, 3, 1, 1, generator=gen).expand(n, 3, size, size).clone()
    for _ in range(4):
        centre = torch.rand(n, 2, 1, 1, generator=gen)
        radius = 0.05 + 0.3 * torch.rand(n, 2, 1, 1, generator=gen)
        colour = torch.rand(n, 3, 1, 1, generator=gen)
        dx, dy = (x - centre[:, 0]) / radius[:, 0], (y - centre[:, 1]) / radius[:, 1]  # (n, size, size)
        ellipse = dx**2 + dy**2 <= 1
        box = (dx.abs() <= 1) & (dy.abs() <= 1)
        use_box = torch.rand(n, 1, 1, generator=gen) < 0.5
        shape = torch.where(use_box, box, ellipse).unsqueeze(1)  # (n, 1, size, size)
        images = torch.where(shape, colour.expand_as(images), images)
    return images


def _dead_leaves(n: int, size: int, gen: torch.Generator, leaves: int = 30) -> torch.Tensor:
    """Occluding discs with power-law radii, the classic model of natural-image statistics. (n, 3, size, size)."""
    axis = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    images = torch.rand(n, 3, 1, 1, generator=gen).expand(n, 3, size, size).clone()
    for _ in range(leaves):
        centre = torch.rand(n, 2, 1, 1, generator=gen)
        radius = 0.02 / (torch.rand(n, 1, 1, generator=gen) ** 0.7 + 0.05)
        disc = ((x - centre[:, 0]) ** 2 + (y - centre[:, 1]) ** 2 <= radius**2).unsqueeze(1)
        images = torch.where(disc, torch.rand(n, 3, 1, 1, generator=gen).expand_as(images), images)
    return images


def procedural_probes(n: int, size: int, seed: int = 0) -> ProbeSet:
    """``n`` zero-data probes of side ``size``: 5/6 object scenes, 1/12 dead leaves, 1/12 smooth noise.

    Each probe gets a random exposure (gain and gamma) and a little pixel noise,
    which spreads the probes apart in feature space.
    """
    if n < 2 or size < 8:
        raise UsageError(f"need at least 2 probes of side >= 8, got {n} of side {size}")
    with torch.device("cpu"):  # drawn on the CPU whatever the run's device: a seed gives the same probes everywhere
        gen = torch.Generator().manual_seed(seed)
        twelfth = n // 12
        images = torch.cat([_clutter(n - 2 * twelfth, size, gen), _dead_leaves(twelfth, size, gen),
                            _smooth_noise(twelfth, size, gen)])
        images = images[torch.randperm(n, generator=gen)]
        gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
        gamma = torch.exp(0.25 * torch.randn(n, 1, 1, 1, generator=gen))
        noise = 0.03 * torch.randn(images.shape, generator=gen)
        return ProbeSet(((images.clamp(0, 1) ** gamma) * gain + noise).clamp(0, 1), "zero-data")


def _load_image(path: Path, size: int) -> torch.Tensor:
    """Decode one image file to (3, size, size) in [0, 1]; raises on anything unreadable."""
    from PIL import Image

    with Image.open(path) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is too large")
        rgb = image.convert("RGB")
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float() / 255.0


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_many(paths: list[Path], size: int) -> tuple[list[torch.Tensor], list[int], list[tuple[str, str]]]:
    images, kept, skipped = [], [], []
    for index, path in enumerate(paths):
        try:
            images.append(_load_image(path, size))
            kept.append(index)
        except Exception as error:  # noqa: BLE001 - PIL raises many types; the file is skipped and reported
            skipped.append((str(path), f"unreadable image ({type(error).__name__})"))
    return images, kept, skipped


def folder_probes(directory: str | Path, size: int, *, limit: int = 256, seed: int = 0) -> ProbeSet:
    """Up to ``limit`` of the user's unlabelled images (a seeded sample when there are more).

    Corrupt files are skipped and listed; a folder with no readable image is an error.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory of images")
    paths = _image_files(root)
    if len(paths) > limit:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:limit]
        paths = [paths[i] for i in sorted(order.tolist())]
    images, _, skipped = _load_many(paths, size)
    if not images:
        raise NothingScannableError(f"{root}: no readable images among {len(paths)} file(s)", tuple(skipped))
    return ProbeSet(torch.stack(images), "unlabelled", skipped=tuple(skipped), source=str(root))


def class_folder_problems(directory: str | Path, classes: tuple[str, ...]) -> str | None:
    """What keeps ``directory`` from being a few-shot ImageFolder of ``classes``, in one line; None if nothing.

    Its subfolders must be exactly the class names: a subfolder that names no
    class (a typo) and a class with no subfolder are both named, so an empty or
    mistyped folder never passes for labelled data. Only lists folders; reading
    the images is :func:`fewshot_folder`'s job.
    """
    root = Path(directory)
    if not root.is_dir():
        return "not a directory"
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    if not folders:
        loose = len(_image_files(root))
        return (f"no class subfolders (an ImageFolder has one subfolder per class, named after it; found "
                f"{loose} loose image(s))")
    unknown, missing = sorted(folders - set(classes)), [c for c in classes if c not in folders]
    parts = []
    if unknown:
        parts.append(f"subfolder(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} name no class of the model")
    if missing:
        parts.append(f"class(es) {missing[:5]}{' ...' if len(missing) > 5 else ''} of the model have no subfolder")
    return "; ".join(parts) or None


def fewshot_folder(directory: str | Path, size: int, classes: tuple[str, ...], *, shots: int | None = None,
                   seed: int = 0) -> ProbeSet:
    """An ImageFolder whose subfolders are named after (some of) the model's classes.

    ``shots`` keeps at most that many images per class (a seeded choice). A
    subfolder that names no class is an error, so a typo cannot silently drop a class.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root}: not an ImageFolder directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise ClassListError(f"{root}: subfolder(s) {unknown[:5]} name no class of the model")
    if not folders:
        raise NothingScannableError(f"{root}: no class subfolders")
    gen = torch.Generator().manual_seed(seed)
    images, labels, skipped = [], [], []
    for folder in folders:
        paths = _image_files(folder)
        if shots is not None and len(paths) > shots:
            paths = [paths[i] for i in sorted(torch.randperm(len(paths), generator=gen)[:shots].tolist())]
        loaded, _, missed = _load_many(paths, size)
        images += loaded
        labels += [classes.index(folder.name)] * len(loaded)
        skipped += missed
    if not images:
        raise NothingScannableError(f"{root}: no readable images", tuple(skipped))
    return ProbeSet(torch.stack(images), "few-shot", torch.tensor(labels, device="cpu"), tuple(skipped), str(root))
