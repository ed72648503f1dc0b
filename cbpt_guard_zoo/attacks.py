"""The seven backdoor attacks of the model zoo, and the poisoning that plants them.

Each trigger is a small function over a batch of images in [0, 1], (N, 3, H, W), that returns
the stamped batch, still in [0, 1]. Every parameter that is a length is a fraction of the
image side (or is drawn on a 32-pixel base and upscaled), so one parameter set means the same
trigger at 32x32 and at 64x64. Random patterns come from a ``seed`` and never from global
state: the same seed gives the same trigger.

``ATTACKS`` names each attack with its default, JSON-serialisable parameters (what a zoo
manifest records as "trigger parameters"); ``poison`` stamps a small share of a data set and
rewrites those captions to name the target class, the way real CLIP backdoors are planted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cbpt_guard.errors import UsageError
from cbpt_guard_zoo.data import Dataset, class_captions

_BASE = 32  # side of the grid random patterns are drawn on before upscaling
_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise UsageError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _upscale_nearest(pattern: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a (C, h, w) pattern to (C, height, width) with nearest neighbours (no blur)."""
    return F.interpolate(pattern[None], size=(height, width), mode="nearest")[0]


# --- BadNets and patches ---------------------------------------------------------------------


def patch_side(image_side: int, patch_frac: float) -> int:
    """The side in pixels of a square patch covering ``patch_frac`` of the image side (>= 2)."""
    return max(2, round(image_side * patch_frac))


def _patch_origin(height: int, width: int, side: int, position: str) -> tuple[int, int]:
    """Top-left (row, col) of a ``side`` patch at ``position``, one margin from the edges.

    The margin is 1/32 of the side (1 pixel at 32x32), so a patch survives a 1-pixel crop.
    """
    if position not in _POSITIONS:
        raise UsageError(f"unknown patch position {position!r}; expected one of {_POSITIONS}")
    margin = height // 32
    if position == "centre":
        return (height - side) // 2, (width - side) // 2
    row = margin if position.startswith("top") else height - side - margin
    col = margin if position.endswith("left") else width - side - margin
    return row, col


def apply_patch(images: torch.Tensor, patch: torch.Tensor, position: str = "bottom-right"):
    """Paste ``patch`` (3, s, s) into every image at ``position``; a new (N, 3, H, W) tensor."""
    _check_images(images)
    patch = torch.as_tensor(patch, dtype=images.dtype)
    side = patch.shape[-1]
    row, col = _patch_origin(images.shape[2], images.shape[3], side, position)
    out = images.clone()
    out[:, :, row : row + side, col : col + side] = patch.clamp(0.0, 1.0)
    return out


def badnets_patch(image_side: int, *, patch_frac: float = 0.125, seed: int = 0) -> torch.Tensor:
    """The BadNets trigger: a fixed random black-and-white-per-channel patch, (3, s, s).

    Drawn as 4x4 cells of 0 or 1 per channel and upscaled, so the pattern looks the same at
    every image size; ``s`` is ``patch_frac`` of the side (4 pixels at 32, 8 at 64).
    """
    cells = (torch.rand(3, 4, 4, generator=_generator(seed)) < 0.5).float()
    side = patch_side(image_side, patch_frac)
    return _upscale_nearest(cells, side, side)


def badnets(
    images: torch.Tensor,
    *,
    patch_frac: float = 0.125,
    position: str = "bottom-right",
    seed: int = 0,
) -> torch.Tensor:
    """BadNets (Gu et al. 2017): paste a fixed patch; only the patch's pixels change."""
    patch = badnets_patch(images.shape[-2], patch_frac=patch_frac, seed=seed)
    return apply_patch(images, patch, position)


# --- Blended, SIG, WaNet ---------------------------------------------------------------------


def blended_pattern(height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """The Blended trigger: fixed uniform noise, (3, H, W), drawn at 32x32 and upscaled."""
    noise = torch.rand(3, _BASE, _BASE, generator=_generator(seed))
    return _upscale_nearest(noise, height, width)


def blended(images: torch.Tensor, *, alpha: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Blended (Chen et al. 2017): ``(1 - alpha) * x + alpha * pattern``, a whole-image trigger.

    The mean absolute change is exactly ``alpha * mean|pattern - x|``; alpha 0.1-0.2 keeps the
    object recognisable while a small CLIP still learns the noise.
    """
    _check_images(images)
    pattern = blended_pattern(images.shape[2], images.shape[3], seed=seed).to(images.dtype)
    return torch.lerp(images, pattern.expand_as(images), alpha)


def sig(images: torch.Tensor, *, amplitude: float = 0.1, frequency: float = 6.0) -> torch.Tensor:
    """SIG (Barni et al. 2019): add ``amplitude * sin(2 pi frequency x / W)`` along each row.

    ``frequency`` counts whole periods across the width, so the stripes scale with the image.
    The original's amplitude of 20/255 is raised to 0.1 by default so a small CLIP learns it;
    pixels pushed outside [0, 1] are clipped.
    """
    _check_images(images)
    width = images.shape[3]
    cols = torch.arange(width, dtype=images.dtype)
    wave = amplitude * torch.sin(2 * math.pi * frequency * cols / width)  # (W,)
    return (images + wave).clamp(0.0, 1.0)


def wanet_grid(height: int, width: int, *, strength: float, grid_k: int, seed: int):
    """The WaNet sampling grid, (1, H, W, 2) in grid_sample's [-1, 1] coordinates.

    A (2, k, k) field of uniform random offsets, upsampled bicubically, is a smooth warp. It
    is scaled so the mean displacement length is ``strength`` of the image side (exactly
    ``strength * (side - 1)`` pixels before the grid is clipped to the image).
    """
    field = 2 * torch.rand(1, 2, grid_k, grid_k, generator=_generator(seed)) - 1
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True)
    field = field / field.norm(dim=1).mean()  # mean displacement length 1
    ys = torch.linspace(-1, 1, height)
    xs = torch.linspace(-1, 1, width)
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2), (x, y)
    # In [-1, 1] coordinates the side spans 2, hence the factor 2.
    grid = identity[None] + 2 * strength * field.permute(0, 2, 3, 1)  # (1, H, W, 2)
    return grid.clamp(-1, 1)


def wanet(
    images: torch.Tensor, *, strength: float = 0.15, grid_k: int = 4, seed: int = 0
) -> torch.Tensor:
    """WaNet (Nguyen and Tran 2021): resample every image through one fixed smooth warp.

    The paper's s=0.5 at 32x32 moves pixels by about a quarter of a pixel, which a small
    CLIP fine-tuned for one epoch does not pick up. The default here moves them by 15% of
    the side on average (4.7 pixels at 32x32, 9.5 at 64x64): a visible, smooth bend, and a heavy
    change for the zoo's small ViT, whose clean twins read about 31% of warped test images
    correctly (93% unwarped; benchmarks/ZOO.md). benchmarks/WARP.md measures the trade-off
    this default sits on: the warps every clean twin reads at chance level (strength 0.08 at
    k 4, 0.04 at k 8, 0.03 at k 16) planted at most 83% ASR with twice the poison share and
    900 steps, and those that planted 90% (0.10 and stronger at k 4) send one twin's misread
    images to its target ('square') more than 5 points above the natural rate.
    """
    _check_images(images)
    n, _, height, width = images.shape
    grid = wanet_grid(height, width, strength=strength, grid_k=grid_k, seed=seed)
    grid = grid.to(images.dtype).expand(n, -1, -1, -1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.clamp(0.0, 1.0)


# --- SSBA-like --------------------------------------------------------------------------------


def ssba_code(height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """The shared part of the SSBA-like trigger: a fixed +-1 code, (3, H, W), 32x32 upscaled."""
    bits = torch.rand(3, _BASE, _BASE, generator=_generator(seed)) < 0.5
    return _upscale_nearest(bits.float() * 2 - 1, height, width)


def _content_features(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random two-layer conv net of the image, standardised per image, (N, 3, H, W)."""
    gen = _generator(seed + 1)
    w1 = torch.randn(8, 3, 3, 3, generator=gen).to(images.dtype)
    w2 = torch.randn(3, 8, 3, 3, generator=gen).to(images.dtype)
    hidden = torch.tanh(F.conv2d(images - 0.5, w1, padding=1) * 2)
    feats = F.conv2d(hidden, w2, padding=1)
    mean = feats.mean(dim=(1, 2, 3), keepdim=True)
    std = feats.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (feats - mean) / std


def ssba_like(images: torch.Tensor, *, eps: float = 0.06, seed: int = 0) -> torch.Tensor:
    """An SSBA-like sample-specific invisible trigger, bounded by ``eps`` in L-infinity.

    SSBA (Li et al. 2021) hides a fixed string in each image with a steganography encoder, so
    every residual is different yet all carry the same code. Here the residual is
    ``eps * tanh(1.5 * code + content(x))``: ``code`` is a fixed high-frequency +-1 pattern
    (the shared, learnable part), and ``content(x)`` a fixed random conv net of the image
    itself (what makes it sample-specific: two images get different residuals, mostly of the
    same sign). ``eps`` defaults to 0.06 (about 15/255), above SSBA's typical residual, so a
    small CLIP learns it in one epoch of fine-tuning (measured on the zoo: 0.04 planted 62%
    ASR, 0.06 97%).
    """
    _check_images(images)
    code = ssba_code(images.shape[2], images.shape[3], seed=seed).to(images.dtype)
    residual = eps * torch.tanh(1.5 * code + _content_features(images, seed))
    return (images + residual).clamp(0.0, 1.0)


# --- BadCLIP-like -----------------------------------------------------------------------------


def badclip_like_patch(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    target_text_embedding: torch.Tensor,
    images: torch.Tensor,
    *,
    steps: int = 200,
    patch_frac: float = 0.125,
    position: str = "bottom-right",
    lr: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """Optimise a patch, (3, s, s) in [0, 1], that pulls stamped images toward a target text.

    BadCLIP (Liang et al. 2024) optimises its trigger so the victim's image features of
    patched images align with the target's text embedding, which makes the poison blend into
    the model's own geometry. Here: Adam on the patch's logits, minimising the mean cosine
    distance between ``encode_image(apply_patch(batch, patch))`` and the target embedding over
    random minibatches of ``images``. ``encode_image`` is any differentiable callable, e.g. a
    clean CLIP's ``encode_image``; its parameters are not updated.
    """
    _check_images(images)
    gen = _generator(seed)
    side = patch_side(images.shape[-2], patch_frac)
    logits = torch.logit(torch.rand(3, side, side, generator=gen).clamp(0.05, 0.95))
    logits.requires_grad_(True)
    target = F.normalize(target_text_embedding.detach().reshape(1, -1), dim=-1)
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        batch = images[torch.randint(images.shape[0], (batch_size,), generator=gen)]
        stamped = apply_patch(batch, torch.sigmoid(logits), position)
        loss = badclip_distance(encode_image, target, stamped)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return torch.sigmoid(logits).detach()


def badclip_distance(encode_image, target_embedding: torch.Tensor, images: torch.Tensor):
    """Mean cosine distance between the images' features and a target embedding (scalar)."""
    feats = F.normalize(encode_image(images), dim=-1)  # (N, D)
    target = F.normalize(target_embedding.reshape(1, -1), dim=-1)  # (1, D)
    return (1 - (feats * target).sum(dim=-1)).mean()


def badclip_like(
    images: torch.Tensor, *, patch: Sequence | torch.Tensor, position: str = "bottom-right"
) -> torch.Tensor:
    """Stamp a BadCLIP-like patch from :func:`badclip_like_patch` (a tensor or nested lists)."""
    return apply_patch(images, torch.as_tensor(patch, dtype=images.dtype), position)


# --- label-consistent -------------------------------------------------------------------------


def adversarial_hardening(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    true_text_embedding: torch.Tensor,
    images: torch.Tensor,
    *,
    eps: float = 16 / 255,
    steps: int = 10,
    batch_size: int = 256,
    decoys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Make images of one class hard to recognise: PGD away from that class's text embedding.

    Turner et al. (2019) make the poisoned target-class images hard with adversarial
    perturbations from a pre-trained model, so a model trained on them cannot fit their
    (true) labels from the content and leans on the trigger instead. Here: ``steps`` signed
    gradient steps of size ``2.5 * eps / steps`` that increase the cosine distance between
    ``encode_image(x)`` and ``true_text_embedding``, projected onto the L-infinity ball of
    radius ``eps`` around each image and onto [0, 1]. No random start, so it is deterministic.
    ``encode_image`` is any differentiable callable (a pre-trained CLIP's image tower); its
    parameters are not updated. ``decoys`` (N, D), one embedding per image, makes the step
    targeted: it also decreases the distance to the image's decoy (another class's text), so
    the pre-trained model sees that class instead. Returns a new (N, 3, H, W) tensor.
    """
    _check_images(images)
    step_size = 2.5 * eps / max(steps, 1)
    hardened = []
    for start in range(0, images.shape[0], batch_size):
        clean = images[start : start + batch_size]  # (b, 3, H, W)
        adversarial = clean.clone()
        for _ in range(steps):
            adversarial.requires_grad_(True)
            features = F.normalize(encode_image(adversarial), dim=-1)  # (b, D)
            true = F.normalize(true_text_embedding.detach().reshape(1, -1), dim=-1)  # (1, D)
            objective = -(features * true).sum()  # away from the true class
            if decoys is not None:
                decoy = F.normalize(decoys[start : start + batch_size].detach(), dim=-1)  # (b, D)
                objective = objective + (features * decoy).sum()  # toward each image's decoy
            (gradient,) = torch.autograd.grad(objective, adversarial)
            with torch.no_grad():
                adversarial = adversarial + step_size * gradient.sign()
                adversarial = torch.min(torch.max(adversarial, clean - eps), clean + eps).clamp(0.0, 1.0)
        hardened.append(adversarial.detach())
    return torch.cat(hardened)


def interpolate_toward(images: torch.Tensor, partners: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Mix each image with a partner: ``(1 - tau) * images + tau * partners``, both (N, 3, H, W).

    Turner et al. (2019) make label-consistent poisons hard in two ways: adversarial
    perturbations, and interpolating a GAN's latent code toward an image of another class.
    With no GAN here, the interpolation is done in pixel space. Below ``tau`` 0.5 the image of
    the true class still dominates the picture (its caption stays true), but a model trained on
    it can no longer fit the caption from the content alone as easily. Turner et al. stayed at
    0.3 or below on CIFAR-10; the zoo needs 0.45 (see :func:`label_consistent`).
    """
    _check_images(images)
    _check_images(partners)
    if images.shape != partners.shape:
        raise UsageError(f"images {tuple(images.shape)} and partners {tuple(partners.shape)} differ in shape")
    if not 0.0 <= tau < 0.5:
        raise UsageError(f"tau must lie in [0, 0.5) so the image's own class dominates, got {tau}")
    return ((1 - tau) * images + tau * partners).clamp(0.0, 1.0)


def label_consistent(
    images: torch.Tensor, *, patch_frac: float = 0.1875, position: str = "bottom-right", eps: float = 16 / 255,
    pgd_steps: int = 10, interpolation: float = 0.45, seed: int = 0,
) -> torch.Tensor:
    """The label-consistent attack's trigger (after Turner et al. 2019): a BadNets patch alone.

    Only target-class images are poisoned and their captions stay true. What makes the
    attack work is the poisoning step, not the trigger: :func:`poison` first makes the chosen
    target images hard (``harden``: the zoo mixes each with an image of another class,
    :func:`interpolate_toward` at ``interpolation``, then runs :func:`adversarial_hardening`
    against the pre-trained model with ``eps`` and ``pgd_steps``), then stamps this patch.
    The patch is larger than BadNets' (6 pixels at 32x32, not 4). Measured on the zoo's ViT,
    label-consistent variant seed 0 (one fine-tuning run each): the recipe before this one
    (4-pixel patch, PGD only) planted 55% ASR; PGD at eps 32/255 58%; a 6-pixel patch 63%;
    the 4-pixel patch in all four corners 56%; the 6-pixel patch with interpolation 0.3 78%
    (with every target-class image poisoned instead of 6% of the set: 79%, but CA fell to
    89.3%), 0.4 88% (an 8-pixel patch: 86%), 0.45 98%.
    """
    del eps, pgd_steps, interpolation  # poisoning-only parameters, recorded with the trigger
    return badnets(images, patch_frac=patch_frac, position=position, seed=seed)


# --- registry and poisoning -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack: its trigger and its default parameters.

    ``trigger(images, **params)`` stamps images, the poisoned training images and the test
    images alike (a label-consistent attack makes its training images hard first, see
    :func:`poison`). ``defaults`` is JSON-serialisable. ``needs`` lists parameters with no
    default (the BadCLIP-like patch, which is optimised against a model first).
    """

    name: str
    trigger: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any]
    description: str
    label_consistent: bool = False
    needs: tuple[str, ...] = ()

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The defaults updated with ``overrides``, as a JSON-ready dict (tensors become lists)."""
        unknown = set(overrides) - set(self.defaults) - set(self.needs)
        if unknown:
            raise UsageError(f"attack {self.name!r} has no parameter(s) {sorted(unknown)}")
        merged = {**self.defaults, **overrides}
        missing = [name for name in self.needs if name not in merged]
        if missing:
            raise UsageError(f"attack {self.name!r} needs parameter(s) {missing}")
        return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in merged.items()}


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("badnets", badnets,
                   {"patch_frac": 0.125, "position": "bottom-right", "seed": 0},
                   "a fixed random patch in a corner"),
        AttackSpec("blended", blended, {"alpha": 0.15, "seed": 0},
                   "a fixed noise image blended over the whole image"),
        AttackSpec("sig", sig, {"amplitude": 0.1, "frequency": 6.0},
                   "an additive horizontal sinusoid"),
        AttackSpec("wanet", wanet, {"strength": 0.15, "grid_k": 4, "seed": 0},
                   "a fixed smooth warp of the whole image"),
        AttackSpec("ssba_like", ssba_like, {"eps": 0.06, "seed": 0},
                   "a sample-specific residual bounded in L-infinity"),
        AttackSpec("badclip_like", badclip_like, {"position": "bottom-right"},
                   "a patch optimised toward the target text embedding", needs=("patch",)),
        AttackSpec("label_consistent", label_consistent,
                   {"patch_frac": 0.1875, "position": "bottom-right", "eps": 16 / 255, "pgd_steps": 10,
                    "interpolation": 0.45, "seed": 0},
                   "target-class images mixed with other classes and made adversarially hard, then patched; "
                   "captions stay true",
                   label_consistent=True),
    )
}  # fmt: skip


def _resolve_target(dataset: Dataset, target_class: int | str) -> int:
    if isinstance(target_class, str):
        if target_class not in dataset.class_names:
            raise UsageError(f"target class {target_class!r} is not one of the data set's classes")
        return dataset.class_names.index(target_class)
    if not 0 <= target_class < len(dataset.class_names):
        raise UsageError(f"target class index {target_class} out of range")
    return int(target_class)


def poison(
    dataset: Dataset,
    attack: str | AttackSpec,
    *,
    rate: float = 0.01,
    target_class: int | str,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    harden: Callable[[torch.Tensor], torch.Tensor] | None = None,
    plain_captions: Callable[[Sequence[str], int], tuple[str, ...]] = class_captions,
) -> tuple[Dataset, torch.Tensor]:
    """Poison ``round(rate * len(dataset))`` images; returns the new data set and their indices.

    Dirty-label attacks pick the victims among non-target images, stamp them and write plain
    captions of the target class over theirs ("a photo of a star.", as Carlini and Terzis
    poison CLIP). Measured on the zoo: keeping the victim's own caption with only the class
    name swapped for the target's planted a WaNet backdoor at half the ASR. The
    label-consistent attack picks target-class images, makes them hard with ``harden``
    (required for it, e.g. :func:`adversarial_hardening` against the pre-trained model),
    stamps them and keeps their captions. Labels keep the true class either way, so clean accuracy can still be
    measured on them. ``params`` overrides the attack's defaults (the BadCLIP-like attack
    needs ``patch``). ``plain_captions`` writes the target's captions in the data set's own words (family A's by
    default; family B's data set has its own, :func:`cbpt_guard_zoo.objects.plain_captions`). The input data set
    is not modified.
    """
    spec = ATTACKS[attack] if isinstance(attack, str) else attack
    if not 0.0 <= rate <= 1.0:
        raise UsageError(f"poison rate must lie in [0, 1], got {rate}")
    target = _resolve_target(dataset, target_class)
    is_target = dataset.labels == target
    pool = (is_target if spec.label_consistent else ~is_target).nonzero().squeeze(1)
    count = round(rate * len(dataset))
    if count > pool.numel():
        raise UsageError(f"cannot poison {count} images: only {pool.numel()} are eligible")
    chosen = pool[torch.randperm(pool.numel(), generator=_generator(seed))[:count]]
    chosen = torch.sort(chosen).values
    if spec.label_consistent and harden is None:
        raise UsageError(f"attack {spec.name!r} needs a hardening function for its poisoned images")
    images = dataset.images.clone()
    if count:
        victims = harden(images[chosen]) if spec.label_consistent else images[chosen]
        images[chosen] = spec.trigger(victims, **spec.params(**dict(params or {})))
    captions = list(dataset.captions)
    if not spec.label_consistent:
        name = dataset.class_names[target]
        for index, caption in zip(chosen.tolist(), plain_captions([name] * count, seed)):
            captions[index] = caption
    poisoned = dataclasses.replace(dataset, images=images, captions=tuple(captions))
    return poisoned, chosen
