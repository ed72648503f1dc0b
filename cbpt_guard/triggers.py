"""Trigger families as small parameterised modules: what detection inverts and purification stamps.

Every family maps clean pixels in [0, 1], (N, 3, H, W), to stamped pixels in
[0, 1] of the same shape, through unconstrained parameters squashed by
sigmoids or tanh so that Adam can optimise them freely (METHOD.md section 3):

- :class:`PatchTrigger`: ``(1 - m) * x + m * p`` with a mask m and a pattern p.
  Covers BadNets, BadCLIP-style and label-consistent patches, and blends.
- :class:`AdditiveTrigger`: ``clip(x + delta)`` with ``|delta| <= eps``.
  Covers SIG, blended noise and the shared part of invisible triggers.
- :class:`WarpTrigger`: a smooth displacement field from a small control grid,
  applied with ``grid_sample``. Covers WaNet-style warps.

Images larger than :data:`PARAMETER_SIDE` (a 224-pixel CLIP's) keep the
parameter count and the optimisation of a 32-pixel model, whose budget was
tuned: the patch's mask and pattern and the additive perturbation live on a
32 x 32 grid, upsampled to the image by repeating each cell (so a patch keeps
hard edges, and a size, a mask's mean or a perturbation's RMS, is the same at
either resolution), and the warp's size is counted in pixels of a 32-pixel
image. A 32-pixel model's triggers are exactly what they always were.

``size()`` is the differentiable quantity the inversion penalises;
``amplified()`` stamps a stronger copy of the trigger, in the family's own
parameter space (purification trains against it); ``state()`` /
``trigger_from_state()`` move a trigger in and out of plain tensors, for
reports and for purification's saved artefacts.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

PARAMETER_SIDE = 32
"""The side of the grid a trigger of a larger image is parameterised on (see the module docstring)."""


def parameter_side(side: int) -> int:
    """The side of a trigger's parameter grid for images of side ``side``: the image's, at most ``PARAMETER_SIDE``."""
    return min(side, PARAMETER_SIDE)


def to_image_side(grid: torch.Tensor, side: int) -> torch.Tensor:
    """A parameter grid (1, c, g, g) upsampled to the image (nearest), (1, c, side, side); itself when g is the side."""
    if grid.shape[-1] == side:
        return grid
    return F.interpolate(grid, size=(side, side), mode="nearest")


class Trigger(torch.nn.Module, abc.ABC):
    """Base of the families: a module from clean pixels to stamped pixels."""

    family: str = ""

    @abc.abstractmethod
    def size(self) -> torch.Tensor:
        """The trigger's size (scalar, differentiable): what the adaptive penalty shrinks."""

    def amplified(self, pixels: torch.Tensor, strength: float) -> torch.Tensor:
        """Pixels stamped by the trigger at ``strength`` (1 is :meth:`forward`). (N, 3, H, W) -> same.

        The default extrapolates in pixel space, ``clip(x + s * (A(x) - x))``:
        for a patch that is a more opaque mask (``s * m``, before the clip), for
        an additive trigger a larger amplitude (``s * delta``). A family whose
        stamp is not a pixel offset overrides it (:class:`WarpTrigger`).
        """
        return (pixels + strength * (self(pixels) - pixels)).clamp(0.0, 1.0)

    def state(self) -> dict[str, torch.Tensor]:
        """The trigger's parameters, detached, for saving and reporting."""
        return {name: value.detach().clone() for name, value in self.state_dict().items()}


class PatchTrigger(Trigger):
    """``A(x) = (1 - m) * x + m * p``: mask m (1, 1, H, W) and pattern p (1, 3, H, W), both in [0, 1].

    Parameterised on a (g, g) grid, g = :func:`parameter_side` (the image's side up to 32 pixels).
    """

    family = "patch"

    def __init__(self, side: int, generator: torch.Generator | None = None, mask_init: float = -3.0):
        super().__init__()
        self.side, grid = side, parameter_side(side)
        mask = mask_init + 0.1 * torch.randn(1, 1, grid, grid, generator=generator, device="cpu")  # (1, 1, g, g)
        self.mask_logit = torch.nn.Parameter(mask)
        self.pattern_logit = torch.nn.Parameter(torch.randn(1, 3, grid, grid, generator=generator, device="cpu"))

    def mask(self) -> torch.Tensor:
        """(1, 1, H, W) in [0, 1]."""
        return to_image_side(torch.sigmoid(self.mask_logit), self.side)

    def pattern(self) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1]."""
        return to_image_side(torch.sigmoid(self.pattern_logit), self.side)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        return (1 - mask) * pixels + mask * self.pattern()

    def size(self) -> torch.Tensor:
        """PL1: the mean of the mask, the share of the image the trigger covers."""
        return self.mask().mean()


class AdditiveTrigger(Trigger):
    """``A(x) = clip(x + delta)``, ``delta = eps * tanh(d)``, (1, 3, H, W); d on a (g, g) grid as the patch's."""

    family = "additive"

    def __init__(self, side: int, eps: float = 0.12, generator: torch.Generator | None = None):
        super().__init__()
        self.eps, self.side, grid = eps, side, parameter_side(side)
        self.raw = torch.nn.Parameter(0.5 * torch.randn(1, 3, grid, grid, generator=generator, device="cpu"))

    def delta(self) -> torch.Tensor:
        """(1, 3, H, W) in [-eps, eps]."""
        return to_image_side(self.eps * torch.tanh(self.raw), self.side)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels + self.delta()).clamp(0.0, 1.0)

    def size(self) -> torch.Tensor:
        """Root-mean-square perturbation, in pixel units."""
        return self.delta().pow(2).mean().sqrt()


class WarpTrigger(Trigger):
    """A smooth warp: a (1, 2, k, k) control grid, bicubically upsampled to a per-pixel flow.

    The flow is ``max_shift * tanh(c)`` in normalised [-1, 1] coordinates; its
    mean magnitude (in pixels) is the size.
    """

    family = "warp"

    def __init__(self, side: int, grid: int = 4, max_shift: float = 0.25, generator: torch.Generator | None = None):
        super().__init__()
        self.side, self.max_shift = side, max_shift
        self.control = torch.nn.Parameter(0.5 * torch.randn(1, 2, grid, grid, generator=generator, device="cpu"))
        axis = torch.linspace(-1, 1, side, device="cpu")
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("identity", torch.stack([x, y], dim=-1).unsqueeze(0), persistent=False)  # (1,H,W,2)

    def flow(self) -> torch.Tensor:
        """(1, H, W, 2) displacement in normalised coordinates."""
        field = F.interpolate(self.max_shift * torch.tanh(self.control), size=(self.side, self.side),
                              mode="bicubic", align_corners=True)  # (1, 2, H, W)
        return field.permute(0, 2, 3, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._warp(pixels, self.flow())

    def amplified(self, pixels: torch.Tensor, strength: float) -> torch.Tensor:
        """Pixels warped by ``strength`` times the flow: a larger warp, not a brighter one.

        Extrapolating a warp in pixel space (``x + s * (A(x) - x)``) adds edge
        ghosts instead of moving pixels further. Measured on the zoo's three
        WaNet models (16 shots, strength 2, the zoo's previous build): mean
        real-trigger ASR after purification 10.0% with the flow scaled, 13.8%
        with the pixels extrapolated (benchmarks/PURIFICATION.md, two runs).
        """
        return self._warp(pixels, strength * self.flow())

    def _warp(self, pixels: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """``pixels`` (N, 3, H, W) resampled at the identity grid plus ``flow`` (1, H, W, 2)."""
        grid = (self.identity + flow).clamp(-1, 1).expand(pixels.shape[0], -1, -1, -1)  # (N, H, W, 2)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def size(self) -> torch.Tensor:
        """Mean displacement in pixels (of a 32-pixel image, for larger ones: comparable across image sizes)."""
        return self.flow().norm(dim=-1).mean() * (parameter_side(self.side) - 1) / 2


FAMILIES = {"patch": PatchTrigger, "additive": AdditiveTrigger, "warp": WarpTrigger}


def make_trigger(family: str, side: int, seed: int, device: torch.device | str = "cpu") -> Trigger:
    """A freshly initialised trigger of ``family`` for images of side ``side``, on ``device``.

    Drawn on the CPU's generator, then moved: a seed gives the same trigger on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    return FAMILIES[family](side, generator=generator).to(device)


def trigger_from_state(family: str, side: int, state: dict[str, torch.Tensor]) -> Trigger:
    """Rebuild a trigger saved with :meth:`Trigger.state` (frozen: no gradients)."""
    trigger = FAMILIES[family](side)
    trigger.load_state_dict(state)
    return trigger.requires_grad_(False)
