"""The zoo's populations ("families"): what a model's data, classes, targets and architectures are.

Family A is the zoo the detector was developed on: shapes, glyphs and
scikit-learn's digits at 32x32, 22 classes, a ViT (width 128, patch 8) and a
ResNet, backdoor targets drawn from ordinary shapes only. Family B exists to
test that detection holds beyond it, so it differs in every axis the product
does not control: another procedural data set (two-colour objects on patterned
backdrops, and stickers, :mod:`cbpt_guard_zoo.objects`) with 14 classes, 64x64 images, a ViT
of another width and patch size (96, 16), another embedding width (48), and a
ResNet; one of its classes (sticker) is a strong natural attractor, and its
backdoors aim at that class as well as at ordinary ones.

A config name belongs to exactly one family, so a recipe (which records its
config) says which family built it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cbpt_guard_zoo import data as data_lib, objects


@dataclass(frozen=True)
class Plan:
    """What `cbpt-guard zoo build --family F` builds of one config: attacks, backdoored seeds, clean twins."""

    attacks: tuple[str, ...] | None  # None: every attack
    seeds: int
    clean: int


@dataclass(frozen=True, eq=False)  # one object per family, compared by identity
class Family:
    """One population of the zoo.

    ``configs`` are its architectures (the first is its main one); ``plans``
    what a whole-family build makes of each full-size config; ``target_pool``
    the classes an ordinary backdoor aims at; ``attractor`` the family's
    natural attractor, if it has one (then every model's pull toward each
    class under small random patches is measured too), at which the seed-0
    backdoor of each of ``attractor_attacks`` aims. Those are whole-image
    triggers: a patch trigger aimed at the attractor would be the attractor's
    own natural pattern, which a clean model already follows.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    target_pool: tuple[str, ...]
    configs: tuple[str, ...]
    image_size: int
    description: str
    templates: tuple[str, ...]
    plain_captions: Callable[[Sequence[str], int], tuple[str, ...]]
    attractor: str | None = None
    attractor_attacks: tuple[str, ...] = ()
    plans: dict[str, Plan] = field(default_factory=dict)

    def target_for(self, attack: str, seed: int) -> str:
        """A backdoored variant's target: the attractor for seed 0 of an attractor attack, else one of the pool."""
        from cbpt_guard_zoo.attacks import ATTACKS

        if self.attractor is not None and seed == 0 and attack in self.attractor_attacks:
            return self.attractor
        index = sorted(ATTACKS).index(attack)
        return self.target_pool[(3 * index + seed) % len(self.target_pool)]


FAMILY_A = Family(
    name="a",
    title="The model zoo",
    classes=data_lib.SHAPE_CLASSES + data_lib.DIGIT_CLASSES,
    # Textures are left out as targets: noise-like triggers drift toward them even in clean models.
    target_pool=tuple(c for c in data_lib.SHAPE_CLASSES if c not in ("checkerboard", "barcode")),
    configs=("vit", "resnet", "vit-tiny"),
    image_size=32,
    description="cbpt-guard model zoo: procedural shapes and scikit-learn digits, 32x32",
    templates=("a photo of a {}.",),
    plain_captions=data_lib.class_captions,
    plans={"vit": Plan(None, 3, 6)},
)

FAMILY_B = Family(
    name="b",
    title="The model zoo, family B",
    classes=objects.CLASSES,
    target_pool=tuple(c for c in objects.CLASSES if c != objects.ATTRACTOR),
    configs=("vit-b", "resnet-b", "vit-b-tiny"),
    image_size=64,
    description="cbpt-guard model zoo, family B: procedural two-colour objects and stickers, 64x64",
    templates=("a drawing of a {}.",),  # the deployment's prompt, in the family's own words (never "a photo")
    plain_captions=objects.plain_captions,
    attractor=objects.ATTRACTOR,
    attractor_attacks=("blended", "sig"),
    # Sized to build in about an hour on a 2-core CPU (benchmarks/ZOO-B.md records the times): six clean twins
    # and three attacks of three seeds on the ViT, two clean twins and two attacks of one seed on the ResNet.
    plans={"vit-b": Plan(("badnets", "blended", "sig"), 3, 6),
           "resnet-b": Plan(("badnets", "blended"), 1, 2)},
)

FAMILIES: dict[str, Family] = {family.name: family for family in (FAMILY_A, FAMILY_B)}


def family_of(config: str) -> Family:
    """The family a config belongs to."""
    for family in FAMILIES.values():
        if config in family.configs:
            return family
    raise KeyError(config)
