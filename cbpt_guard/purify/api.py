"""Purification as one stage: data -> CBPT with detection's dummy triggers -> verification -> artefacts.

The pipeline (``check``) and ``cbpt-guard purify`` both call
:func:`purify_and_verify`. Labelled few-shot images are split per class into a
training part (``shots`` per class) and a held-out part for clean accuracy;
without labels (the zero-shot tiers) the model's own predictions on clean probe
images are the labels, and a disjoint set of probes measures agreement with the
original model. Verification ends with a fresh detection run (a new seed)
against the purified classifier, scored on the evidence that depends on the
class embeddings (the encoders, and so the collapse itself, are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cbpt_guard.chunking import reports_out_of_memory
from cbpt_guard.classifier import ZeroShotClassifier, build_classifier
from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.outcome import Outcome, z_to_score
from cbpt_guard.detect.run import DetectBudget, DetectionReport, Evidence, detect
from cbpt_guard.errors import UsageError
from cbpt_guard.policy.schema import PurificationSettings
from cbpt_guard.probes import ProbeSet, procedural_probes
from cbpt_guard.progress import Progress, silent
from cbpt_guard.purify.trainer import TuningResult, pseudo_labels, tune_prompts
from cbpt_guard.purify.triggers_choice import select_dummy_triggers
from cbpt_guard.purify.verify import ClassifierMetrics, DummyTrigger, accuracy_drop, measure

ZERO_SHOT_TRAIN = 256
"""Probe images tuned on in the zero-shot tiers (and as many again held out)."""
RECHECK_SEED_OFFSET = 1
"""Verification re-runs detection with ``seed + 1``: a fresh inversion, not a replay of the first."""
_POLICY = PurificationSettings()
"""The policy schema's purification defaults, the source of :class:`PurifySettings`' defaults."""


@dataclass(frozen=True)
class PurifySettings:
    """CBPT's knobs; the policy's ``purification`` section sets the first eight.

    Their defaults are the policy schema's (:class:`~cbpt_guard.policy.schema.PurificationSettings`),
    the one source of purification defaults, which the purification benchmark
    runs. The last two are not policy keys: AdamW over the whole labelled set
    at once (``batch_size`` None), the image side being a precomputed matrix.
    """

    n_ctx: int = _POLICY.n_ctx
    steps: int = _POLICY.steps
    lr: float = _POLICY.lr
    l_bd: float = _POLICY.loss_weights.l_bd
    l_drift: float = _POLICY.loss_weights.l_drift
    l_distill: float = _POLICY.loss_weights.l_distill
    margin: float = _POLICY.margin
    shots: int = _POLICY.shots
    batch_size: int | None = None
    optimiser: str = "adamw"

    @classmethod
    def from_policy(cls, section) -> PurifySettings:
        """From a policy's :class:`~cbpt_guard.policy.schema.PurificationSettings`."""
        weights = section.loss_weights
        return cls(n_ctx=section.n_ctx, steps=section.steps, lr=section.lr, l_bd=weights.l_bd,
                   l_drift=weights.l_drift, l_distill=weights.l_distill, margin=section.margin,
                   shots=section.shots)


@dataclass(frozen=True)
class PurificationRun:
    """Everything one purification produced and measured."""

    tier: str
    settings: PurifySettings
    dummies: tuple[DummyTrigger, ...]
    tuning: TuningResult
    before: ClassifierMetrics
    after: ClassifierMetrics
    ca_drop: float
    train_images: int
    held_out_images: int
    recheck: DetectionReport
    residual: Residual

    @property
    def recheck_found(self) -> bool:
        """Whether the re-detection still finds classifier-level evidence toward the original target."""
        return self.residual.score >= self.residual.threshold

    @property
    def residual_evidence(self) -> bool:
        """Whether verification counts the re-detection against the purified model: evidence found, or no answer."""
        return self.recheck_found or self.recheck.outcome is Outcome.INCONCLUSIVE


@dataclass(frozen=True)
class Residual:
    """What the re-detection against the purified classifier still shows.

    ``score`` is the calibrated score of the strongest classifier-level
    evidence (see ``calibration.classifier_level``) among the signals that
    point at the original target (0 when none does). The unchanged encoder
    still collapses stamped features, and any classifier maps a collapsed
    region to *some* class; what purification must end is the attacker's
    choice of class. The strongest signal overall is kept for the report.
    """

    score: float
    threshold: float
    target: str | None
    strongest: tuple[str, str, float] | None
    """(signal, the class it points at, its z) of the strongest classifier-level signal overall."""


def residual_evidence(recheck: DetectionReport, calibration: calib.Calibration, target: str | None) -> Residual:
    """Score ``recheck``'s classifier-level evidence toward ``target`` (toward any class when None)."""
    zs = calib.family_z(calib.classifier_level(recheck.features), calibration.stats)
    targets = {f.family: f.target for f in recheck.families}
    if recheck.anomaly is not None:
        targets["anomaly"] = recheck.anomaly.suspect
    toward = [z for name, z in zs.items() if target is None or targets.get(name) == target]
    score = z_to_score(max(toward)) if toward else 0.0
    strongest = max(zs.items(), key=lambda item: item[1], default=None)
    return Residual(score=score, threshold=calibration.threshold, target=target,
                    strongest=(strongest[0], targets.get(strongest[0], "?"), strongest[1]) if strongest else None)


@dataclass(frozen=True)
class _Split:
    train: torch.Tensor  # (N, 3, S, S)
    train_labels: torch.Tensor | None  # (N,) true labels, or None: pseudo-labels are made later
    held: torch.Tensor  # (M, 3, S, S)
    held_labels: torch.Tensor | None  # (M,) or None
    tier: str

    def to(self, device: torch.device) -> _Split:
        """The same split on ``device`` (the model's): images and labels are made on the CPU, then moved."""
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return _Split(move(self.train), move(self.train_labels), move(self.held), move(self.held_labels), self.tier)


def split_labelled(data: ProbeSet, shots: int, seed: int) -> _Split:
    """Per class, ``shots`` images (a seeded choice) to tune on and the rest held out for clean accuracy."""
    if data.labels is None:
        raise UsageError("few-shot purification needs labelled images (an ImageFolder)")
    generator = torch.Generator().manual_seed(seed)
    train, held = [], []  # indices into the CPU-held data, drawn on the CPU
    for label in sorted(set(data.labels.tolist())):
        index = torch.nonzero(data.labels == label).flatten()  # (n_c,)
        index = index[torch.randperm(len(index), generator=generator, device="cpu")]
        train.append(index[:shots])
        held.append(index[shots:])
    train_index, held_index = torch.cat(train).sort().values, torch.cat(held).sort().values
    if len(held_index) == 0:
        raise UsageError(f"{data.source}: every labelled image is used for tuning at {shots} shots; "
                         "add images (or lower the policy's shots) so clean accuracy can be verified")
    return _Split(data.images[train_index], data.labels[train_index], data.images[held_index],
                  data.labels[held_index], "few-shot")


def split_unlabelled(probes: ProbeSet | None, image_size: int, seed: int) -> _Split:
    """Zero-shot tiers: the user's unlabelled probes halved, or fresh procedural probes, with no labels."""
    if probes is not None and len(probes.images) >= 4:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(probes.images), generator=generator, device="cpu")
        half = len(order) // 2
        return _Split(probes.images[order[:half]], None, probes.images[order[half:]], None, probes.tier)
    images = procedural_probes(2 * ZERO_SHOT_TRAIN, image_size, seed + 7).images  # a set detection never saw
    return _Split(images[:ZERO_SHOT_TRAIN], None, images[ZERO_SHOT_TRAIN:], None, "zero-data")


def dummy_triggers(evidence: Evidence, calibration: calib.Calibration) -> list[DummyTrigger]:
    """The dummy triggers CBPT trains against, with the class each sent probes to (see ``select_dummy_triggers``)."""
    _, zs = calib.score(evidence.features, calibration)
    targets = {finding.family: finding.target for finding in evidence.families}
    return [DummyTrigger(family, evidence.triggers[family], evidence.classes.index(targets[family]))
            for family in select_dummy_triggers(evidence.triggers, zs)]


@reports_out_of_memory("purification")
def purify_and_verify(model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...],
                      evidence: Evidence, calibration: calib.Calibration, *, settings: PurifySettings,
                      data: ProbeSet | None = None, probes: ProbeSet | None = None,
                      detect_budget: DetectBudget = DetectBudget(), seed: int = 0, target: str | None = None,
                      progress: Progress = silent) -> PurificationRun:
    """Tune class prompts against detection's dummy triggers, then verify the purified classifier.

    ``data`` is a labelled few-shot set (tier few-shot); without it the
    unlabelled ``probes`` (or procedural ones) are pseudo-labelled by the model.
    ``target`` is the class detection suspected; the re-detection looks for
    evidence still pointing at it. The model's weights are never changed.
    """
    original = build_classifier(model, classes, templates)
    image_size = original.image_size
    split = split_labelled(data, settings.shots, seed) if data is not None else \
        split_unlabelled(probes, image_size, seed)
    split = split.to(original.device)
    train_labels = split.train_labels if split.train_labels is not None else pseudo_labels(original, split.train)
    dummies = dummy_triggers(evidence, calibration)
    progress(f"prompt tuning on {len(split.train)} {split.tier} images against {len(dummies)} dummy trigger(s)")
    tuning = tune_prompts(model, classes, templates, split.train, train_labels, [d.trigger for d in dummies],
                          n_ctx=settings.n_ctx, steps=settings.steps, lr=settings.lr, l_bd=settings.l_bd,
                          l_drift=settings.l_drift, l_distill=settings.l_distill, margin=settings.margin,
                          batch_size=settings.batch_size, seed=seed, optimiser=settings.optimiser, progress=progress)
    purified = ZeroShotClassifier(model, tuning.class_embeddings)
    reference = original.predict(split.held)  # (M,)
    before = measure(original, split.held, split.held_labels, reference, dummies)
    after = measure(purified, split.held, split.held_labels, reference, dummies)
    recheck = detect(model, classes, templates, calibration=calibration, probes=probes, budget=detect_budget,
                     seed=seed + RECHECK_SEED_OFFSET, text_embeddings=tuning.class_embeddings, progress=progress,
                     label="re-detection of the purified classifier")
    return PurificationRun(tier=split.tier, settings=settings, dummies=tuple(dummies), tuning=tuning, before=before,
                           after=after, ca_drop=accuracy_drop(before, after), train_images=len(split.train),
                           held_out_images=len(split.held), recheck=recheck,
                           residual=residual_evidence(recheck, calibration, target))
