"""One detection run: probes -> per-family contrastive inversion -> evidence -> calibrated verdict."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from pydantic import BaseModel, ConfigDict

from cbpt_guard.classifier import ZeroShotClassifier, build_classifier
from cbpt_guard.detect import calibration as calib
from cbpt_guard.detect.evidence import class_anomaly, family_evidence
from cbpt_guard.detect.inversion import InversionBudget, InversionResult, invert
from cbpt_guard.errors import ClassListError
from cbpt_guard.imaging import png_data_uri
from cbpt_guard.probes import ProbeSet, procedural_probes

FOUND = "backdoor evidence found"
NOT_FOUND = "no evidence of a backdoor found"
INCONCLUSIVE = "inconclusive"
# A trigger that never collapsed counts as this many times its final size: it is at least that big.
NOT_COLLAPSED_FACTOR = 4.0
TARGETED = "targeted"
"""The evidence entry of the patch inversion aimed at a class (its trigger is a patch)."""


@dataclass(frozen=True)
class DetectBudget:
    """Everything that bounds one detection run (the policy sets it)."""

    families: tuple[str, ...] = ("patch", "additive", "warp")
    probes: int = 96
    inversion: InversionBudget = field(default_factory=InversionBudget)
    anomaly_steps: int = 30
    anomaly_probes: int = 12
    targeted_classes: int = 4
    """How many classes the targeted patch inversion is aimed at, cheapest anomaly cost first (0: skip);
    each aimed inversion runs half the family steps. Four: a label-consistent zoo model's target ranked
    fourth among the anomaly's costs."""


class FamilyReport(BaseModel):
    """One trigger family's inversion and what it showed."""

    model_config = ConfigDict(frozen=True)

    family: str
    collapsed: bool
    size: float
    log_size: float
    collapse_cos: float
    target: str
    concentration: float
    entropy: float
    inverted_asr: float
    histogram: tuple[int, ...]
    steps_run: int
    seconds: float
    budget_exhausted: bool
    z: float | None = None
    images: dict[str, str] = {}


class AnomalyReport(BaseModel):
    """The per-class (Neural Cleanse style) targeted-trigger costs, sizes and success rates."""

    model_config = ConfigDict(frozen=True)

    costs: tuple[float, ...]
    sizes: tuple[float, ...]
    success: tuple[float, ...]
    suspect: str
    anomaly_index: float
    z: float | None = None


class DetectionReport(BaseModel):
    """Everything one detection run found, ready for the decision and the reports."""

    model_config = ConfigDict(frozen=True)

    outcome: str
    score: float
    threshold: float
    suspected_target: str | None
    classes: tuple[str, ...]
    probe_tier: str
    probe_count: int
    probe_source: str
    seed: int
    budget: dict
    calibration: str
    families: tuple[FamilyReport, ...]
    anomaly: AnomalyReport | None
    features: dict[str, float]
    skipped: tuple[tuple[str, str], ...]
    probe_files_skipped: tuple[tuple[str, str], ...]
    seconds: float


def _family_images(trigger, probes: torch.Tensor) -> dict[str, str]:
    example = probes[:1]
    images = {"clean": png_data_uri(example[0]), "stamped": png_data_uri(trigger(example)[0])}
    if trigger.family == "patch":
        images |= {"mask": png_data_uri(trigger.mask()[0]), "pattern": png_data_uri(trigger.pattern()[0])}
    elif trigger.family == "additive":
        delta = trigger.delta()[0]
        images["perturbation"] = png_data_uri(0.5 + delta / (2 * trigger.eps))
    else:
        flow = trigger.flow()[0].permute(2, 0, 1)  # (2, H, W)
        images["flow"] = png_data_uri(torch.cat([0.5 + flow / (2 * trigger.max_shift), torch.full_like(flow[:1], 0.5)]))
    return images


@dataclass
class Evidence:
    """Everything the inversions showed, before any calibration is applied."""

    classes: tuple[str, ...]
    probes: ProbeSet
    probe_count: int
    families: list[dict]
    anomaly: dict | None
    features: dict[str, float]
    skipped: list[tuple[str, str]]
    seconds: float

    @property
    def targets(self) -> dict[str, str]:
        """Per family (and the anomaly signal) the class its trigger pointed to."""
        found = {f["family"]: f["target"] for f in self.families}
        if self.anomaly:
            found["anomaly"] = self.anomaly["suspect"]
        return found


def gather_evidence(model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...], *,
                    probes: ProbeSet | None = None, budget: DetectBudget = DetectBudget(), seed: int = 0,
                    text_embeddings: torch.Tensor | None = None,
                    progress: Callable[[str], None] = lambda line: None) -> Evidence:
    """Run every inversion of the budget on ``model`` as a zero-shot classifier; no labels used.

    ``text_embeddings`` (C, d) replaces the hand-written class embeddings: that
    is how verification re-runs detection against a purified classifier.
    """
    if not classes:
        raise ClassListError("detection needs the deployment's class names (none were given)")
    started = time.perf_counter()
    torch.manual_seed(seed)
    classifier = (build_classifier(model, classes, templates) if text_embeddings is None
                  else ZeroShotClassifier(model, text_embeddings))
    if probes is None:
        probes = procedural_probes(budget.probes, classifier.image_size, seed)
    pixels = probes.images[: budget.probes]
    families, evidence, skipped = [], {"families": {}}, []
    for offset, family in enumerate(budget.families):
        progress(f"inverting the {family} family ({budget.inversion.steps} steps)")
        result = invert(classifier, pixels, family, budget.inversion, seed + 1000 * offset)
        families.append(_record(classifier, pixels, family, result, classes, evidence, skipped))
    anomaly = None
    if budget.anomaly_steps > 0:
        progress(f"per-class anomaly ({len(classes)} classes, {budget.anomaly_steps} steps)")
        found = class_anomaly(classifier, pixels[: budget.anomaly_probes], steps=budget.anomaly_steps, seed=seed)
        evidence["anomaly_index"] = found.anomaly_index
        anomaly = dict(costs=found.costs, sizes=found.sizes, success=found.success,
                       suspect=classes[found.suspect_index], anomaly_index=found.anomaly_index)
        if budget.targeted_classes > 0:
            cheapest = sorted(range(len(classes)), key=lambda c: found.costs[c])[: budget.targeted_classes]
            progress(f"targeted patch inversion toward {', '.join(classes[c] for c in cheapest)}")
            result = _targeted(classifier, pixels, cheapest, budget, seed)
            families.append(_record(classifier, pixels, TARGETED, result, classes, evidence, skipped))
    else:
        skipped.append(("detection.anomaly", "per-class anomaly disabled by the budget"))
    if budget.targeted_classes == 0 or budget.anomaly_steps == 0:
        why = "disabled by the budget" if budget.targeted_classes == 0 else "needs the per-class anomaly's ranking"
        skipped.append((f"detection.{TARGETED}", f"targeted inversion {why}"))
    return Evidence(tuple(classes), probes, len(pixels), families, anomaly, calib.features_of(evidence), skipped,
                    time.perf_counter() - started)


def _targeted(classifier: ZeroShotClassifier, pixels: torch.Tensor, candidates: list[int], budget: DetectBudget,
              seed: int) -> InversionResult:
    """Of the patch inversions aimed (text term) at each candidate class, the one that reaches its class best.

    The label-free families look for whatever pattern collapses features most
    cheaply; on a small model that is often a universal pattern rather than a
    weak backdoor (a label-consistent one, say). Aiming the patch search at a
    class separates the two: aimed at the backdoor's class, the patch sends
    nearly every probe there, while on a clean model it collapses the features
    without carrying them across (benchmarks/DETECTION.md's run: 88-91% of
    the probes to each label-consistent model's target, 38-60% to the clean
    twins' best class, at 150 steps). Candidates are the classes the per-class anomaly
    found cheapest to reach; ties go to the smaller patch.
    """
    aimed = replace(budget.inversion, steps=max(1, budget.inversion.steps // 2),  # candidates share one family's time
                    time_limit_s=budget.inversion.time_limit_s / len(candidates))
    scored = []
    for rank, c in enumerate(candidates):
        result = invert(classifier, pixels, "patch", aimed, seed + 5000 + rank, toward=classifier.text[c])
        reached = float((classifier.predict(result.trigger(pixels)) == c).float().mean())  # share sent to c
        scored.append((-reached, _effective_size(result), rank, result))
    best = min(scored)[3]
    return replace(best, seconds=sum(entry[3].seconds for entry in scored))  # the stage's time, all candidates


def _effective_size(result: InversionResult) -> float:
    """The size evidence uses: a trigger that never collapsed counts as ``NOT_COLLAPSED_FACTOR`` times bigger."""
    return result.size if result.collapsed else result.size * NOT_COLLAPSED_FACTOR


def _record(classifier: ZeroShotClassifier, pixels: torch.Tensor, family: str, result: InversionResult,
            classes: tuple[str, ...], evidence: dict, skipped: list[tuple[str, str]]) -> dict:
    """One inversion's entry in :attr:`Evidence.families`; adds its features to ``evidence`` and notes a timeout."""
    found = family_evidence(classifier, pixels, result.trigger.family, result.trigger, result.collapsed, result.size,
                            result.collapse_cos)
    log_size = math.log(max(_effective_size(result), 1e-6))
    evidence["families"][family] = {"log_size": log_size, "concentration": found.concentration,
                                    "inverted_asr": found.inverted_asr}
    if result.budget_exhausted and not result.collapsed:
        skipped.append((f"detection.{family}", f"time budget exhausted after {result.steps_run} steps"))
    return dict(family=family, collapsed=result.collapsed, size=result.size, log_size=log_size,
                collapse_cos=result.collapse_cos, target=classes[found.target_index],
                concentration=found.concentration, entropy=found.entropy, inverted_asr=found.inverted_asr,
                histogram=found.class_histogram, steps_run=result.steps_run, seconds=round(result.seconds, 2),
                budget_exhausted=result.budget_exhausted, images=_family_images(result.trigger, pixels),
                trigger=result.trigger)


def judge(evidence: Evidence, calibration: calib.Calibration, budget: DetectBudget, seed: int) -> DetectionReport:
    """Score gathered evidence against a calibration and word the verdict."""
    value, zs = calib.score(evidence.features, calibration, evidence.targets)
    family_reports = tuple(FamilyReport(**{k: v for k, v in f.items() if k != "trigger"}, z=zs.get(f["family"]))
                           for f in evidence.families)
    anomaly_report = AnomalyReport(**evidence.anomaly, z=zs.get("anomaly")) if evidence.anomaly else None
    skipped = tuple(evidence.skipped)
    outcome = FOUND if value >= calibration.threshold else (INCONCLUSIVE if skipped else NOT_FOUND)
    suspect = calib.suspected_target(zs, evidence.targets, calibration) if outcome == FOUND else None
    return DetectionReport(
        outcome=outcome, score=value, threshold=calibration.threshold, suspected_target=suspect,
        classes=evidence.classes, probe_tier=evidence.probes.tier, probe_count=evidence.probe_count,
        probe_source=evidence.probes.source, seed=seed, budget=_budget_dict(budget), calibration=calibration.source,
        families=family_reports, anomaly=anomaly_report, features=evidence.features, skipped=skipped,
        probe_files_skipped=tuple(evidence.probes.skipped), seconds=round(evidence.seconds, 2))


def detect(model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...], *,
           calibration: calib.Calibration, probes: ProbeSet | None = None, budget: DetectBudget = DetectBudget(),
           seed: int = 0, text_embeddings: torch.Tensor | None = None,
           progress: Callable[[str], None] = lambda line: None) -> DetectionReport:
    """Gather evidence and judge it. Deterministic for a seed.

    Nothing that was skipped is ever reported as clean: a run with a skipped
    step and no evidence is "inconclusive".
    """
    evidence = gather_evidence(model, classes, templates, probes=probes, budget=budget, seed=seed,
                               text_embeddings=text_embeddings, progress=progress)
    return judge(evidence, calibration, budget, seed)


def _budget_dict(budget: DetectBudget) -> dict:
    data = asdict(budget)
    data["families"] = list(budget.families)
    return data
