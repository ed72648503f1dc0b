"""One detection run: probes -> per-family contrastive inversion -> evidence -> calibrated verdict."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict

from cbpt_guard.chunking import reports_out_of_memory
from cbpt_guard.classifier import ZeroShotClassifier, build_classifier
from cbpt_guard.detect import calibration as calib, reference_free as ref_free
from cbpt_guard.detect.budget import (
    DetectBudget,
    InversionBudget,
    budget_differences,
    calibrate_command,
    uncalibrated_reason,
)
from cbpt_guard.detect.domain import Domain, domain_differences, domain_outcome, uncalibrated_statement
from cbpt_guard.detect.evidence import class_anomaly, family_evidence
from cbpt_guard.detect.findings import AnomalyFinding, FamilyFinding
from cbpt_guard.detect.inversion import InversionResult, inversion_work, invert
from cbpt_guard.detect.outcome import Outcome
from cbpt_guard.errors import ClassListError, UncalibratedBudgetError
from cbpt_guard.imaging import png_data_uri
from cbpt_guard.probes import ProbeSet, procedural_probes
from cbpt_guard.progress import FORWARD_ONLY, Deadline, Progress, silent
from cbpt_guard.triggers import Trigger

__all__ = ["AnomalyFinding", "DetectBudget", "DetectionReport", "Evidence", "FamilyFinding", "InversionBudget",
           "Outcome", "check_calibrated", "detect", "gather_evidence", "judge"]

# A trigger that never collapsed counts as this many times its final size: it is at least that big.
NOT_COLLAPSED_FACTOR = 4.0
TARGETED = "targeted"
"""The evidence entry of the patch inversion aimed at a class (its trigger is a patch)."""


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

    outcome: Outcome
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
    reference_free: dict | None = None
    """The reference-free score (``detect.reference_free``): its value, class, bar and what it rests on."""
    uncalibrated: str | None = None
    """Set when the model is outside the calibration's family: the statement every report shows, with the
    command that fits a calibration for it; the outcome then rests on the reference-free score."""


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


@dataclass(frozen=True)
class Evidence:
    """Everything the inversions showed, before any calibration is applied.

    ``triggers`` holds the inverted trigger modules by family, in detection's
    order, apart from the findings: purification trains against them, while
    scoring and the reports read only the findings.
    """

    classes: tuple[str, ...]
    probes: ProbeSet
    probe_count: int
    families: tuple[FamilyFinding, ...]
    anomaly: AnomalyFinding | None
    features: dict[str, float]
    skipped: tuple[tuple[str, str], ...]
    seconds: float
    triggers: Mapping[str, Trigger]
    reference_free: ref_free.ReferenceFreeScore | None = None
    """The reference-free score of the patch searches; None when no patch search ran."""

    @property
    def targets(self) -> dict[str, str]:
        """Per family (and the anomaly signal) the class its trigger pointed to."""
        found = {f.family: f.target for f in self.families}
        if self.anomaly:
            found["anomaly"] = self.anomaly.suspect
        return found


@reports_out_of_memory("detection")
def gather_evidence(model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...], *,
                    probes: ProbeSet | None = None, budget: DetectBudget = DetectBudget(), seed: int = 0,
                    text_embeddings: torch.Tensor | None = None, progress: Progress = silent,
                    label: str = "detection") -> Evidence:
    """Run every inversion of the budget on ``model`` as a zero-shot classifier; no labels used.

    ``text_embeddings`` (C, d) replaces the hand-written class embeddings: that
    is how verification re-runs detection against a purified classifier.
    Every stage runs all its steps; past ``budget.time_limit_s`` the run
    aborts with :class:`~cbpt_guard.errors.TimeLimitExceeded` instead, so the
    evidence never depends on how busy the machine was. Progress events name
    their stage after ``label`` ("detection: warp inversion").
    """
    if not classes:
        raise ClassListError("detection needs the deployment's class names (none were given)")
    started = time.perf_counter()
    deadline = Deadline(budget.time_limit_s, what=label,
                        hint="give it more time (the policy's detection.budget.time_limit_s, or --time-limit)",
                        planned=planned_work(budget, len(classes)), sure=inversions_work(budget))
    torch.manual_seed(seed)
    classifier = (build_classifier(model, classes, templates) if text_embeddings is None
                  else ZeroShotClassifier(model, text_embeddings))
    if probes is None:
        probes = procedural_probes(budget.probes, classifier.image_size, seed)
    pixels = probes.images[: budget.probes].to(classifier.device)  # (N, 3, S, S), on the model's device
    families, triggers, skipped, aimed = [], {}, [], []
    for offset, family in enumerate(budget.families):
        result = invert(classifier, pixels, family, budget.inversion, seed + 1000 * offset, progress=progress,
                        stage=f"{label}: {family} inversion", deadline=deadline)
        families.append(_record(classifier, pixels, family, result, classes))
        triggers[family] = result.trigger
    anomaly = None
    if budget.anomaly_steps > 0:
        found = class_anomaly(classifier, pixels[: budget.anomaly_probes], steps=budget.anomaly_steps, seed=seed,
                              max_classes=budget.anomaly_classes, progress=progress,
                              stage=f"{label}: per-class anomaly search ({len(classes)} classes)", deadline=deadline)
        anomaly = AnomalyFinding(costs=tuple(found.costs), sizes=tuple(found.sizes), success=tuple(found.success),
                                 suspect=classes[found.suspect_index], anomaly_index=found.anomaly_index)
        if budget.targeted_classes > 0:
            cheapest = list(found.ranking[: budget.targeted_classes])
            result, aimed = _targeted(classifier, pixels, cheapest, classes, budget, seed, progress, label, deadline)
            families.append(_record(classifier, pixels, TARGETED, result, classes))
            triggers[TARGETED] = result.trigger
    else:
        skipped.append(("detection.anomaly", "per-class anomaly disabled by the budget"))
    if budget.targeted_classes == 0 or budget.anomaly_steps == 0:
        why = "disabled by the budget" if budget.targeted_classes == 0 else "needs the per-class anomaly's ranking"
        skipped.append((f"detection.{TARGETED}", f"targeted inversion {why}"))
    searches = [("patch", None, triggers["patch"])] if "patch" in triggers else []
    searches += [(TARGETED, c, trigger) for c, trigger in aimed]
    reference_free = ref_free.measure(classifier, pixels, searches, tuple(classes), seed=seed) if searches else None
    return Evidence(tuple(classes), probes, len(pixels), tuple(families), anomaly, calib.features_of(families, anomaly),
                    tuple(skipped), time.perf_counter() - started, triggers, reference_free)


def planned_work(budget: DetectBudget, classes: int) -> float:
    """The image passes a detection at ``budget`` makes over ``classes`` classes, for its time estimate.

    Forward and backward count 1, forward only :data:`~cbpt_guard.progress.FORWARD_ONLY`; the per-class
    search's term is its searched patches x N stamped images per step: every class up to
    ``anomaly_classes``, else a screen of ``anomaly_classes // 2`` groups and a search of ``anomaly_classes``
    (cbpt_guard/detect/anomaly.py).
    """
    work = inversions_work(budget)
    if budget.anomaly_steps > 0:
        limit = budget.anomaly_classes
        patches = classes if limit is None or classes <= limit else max(1, limit // 2) + limit
        work += (budget.anomaly_steps + FORWARD_ONLY) * patches * budget.anomaly_probes
    return work


def inversions_work(budget: DetectBudget) -> float:
    """The image passes of the budget's inversions alone (the label-free families and the targeted ones)."""
    probes = budget.probes
    work = len(budget.families) * inversion_work(budget.inversion, probes)
    if budget.anomaly_steps > 0:
        aimed = replace(budget.inversion, steps=max(1, budget.inversion.steps // 2))
        work += budget.targeted_classes * inversion_work(aimed, probes)
    return work


def _targeted(classifier: ZeroShotClassifier, pixels: torch.Tensor, candidates: list[int], classes: tuple[str, ...],
              budget: DetectBudget, seed: int, progress: Progress, label: str,
              deadline: Deadline) -> tuple[InversionResult, list[tuple[int, Trigger]]]:
    """Of the patch inversions aimed (text term) at each candidate class, the one that reaches its class best.

    Every candidate's trigger is returned beside it, by class index: the
    reference-free score compares how specifically each class is reached.

    The label-free families look for whatever pattern collapses features most
    cheaply; on a small model that is often a universal pattern rather than a
    weak backdoor (a label-consistent one, say). Aiming the patch search at a
    class separates the two: aimed at the backdoor's class, the patch sends
    nearly every probe there, while on a clean model it collapses the features
    without carrying them across (benchmarks/detection.py measures both on the
    zoo's label-consistent models and their clean twins: benchmarks/DETECTION.md).
    Candidates are the classes the per-class anomaly
    found cheapest to reach; ties go to the smaller patch.
    """
    aimed = replace(budget.inversion, steps=max(1, budget.inversion.steps // 2))
    scored = []
    for rank, c in enumerate(candidates):
        stage = f"{label}: targeted patch inversion toward {classes[c]!r} ({rank + 1} of {len(candidates)})"
        result = invert(classifier, pixels, "patch", aimed, seed + 5000 + rank, toward=classifier.text[c],
                        progress=progress, stage=stage, deadline=deadline)
        reached = float((classifier.predict(result.trigger(pixels)) == c).float().mean())  # share sent to c
        scored.append((-reached, _effective_size(result), rank, result))
    best = min(scored)[3]
    aimed = [(candidates[entry[2]], entry[3].trigger) for entry in scored]
    return replace(best, seconds=sum(entry[3].seconds for entry in scored)), aimed  # the stage's time, all candidates


def _effective_size(result: InversionResult) -> float:
    """The size evidence uses: a trigger that never collapsed counts as ``NOT_COLLAPSED_FACTOR`` times bigger."""
    return result.size if result.collapsed else result.size * NOT_COLLAPSED_FACTOR


def _record(classifier: ZeroShotClassifier, pixels: torch.Tensor, family: str, result: InversionResult,
            classes: tuple[str, ...]) -> FamilyFinding:
    """One inversion's entry in :attr:`Evidence.families`."""
    found = family_evidence(classifier, pixels, result.trigger.family, result.trigger, result.collapsed, result.size,
                            result.collapse_cos)
    log_size = math.log(max(_effective_size(result), 1e-6))
    return FamilyFinding(family=family, collapsed=result.collapsed, size=result.size, log_size=log_size,
                         collapse_cos=result.collapse_cos, target=classes[found.target_index],
                         concentration=found.concentration, entropy=found.entropy, inverted_asr=found.inverted_asr,
                         histogram=tuple(found.class_histogram), steps_run=result.steps_run,
                         seconds=round(result.seconds, 2), images=_family_images(result.trigger, pixels))


def judge(evidence: Evidence, calibration: calib.Calibration, budget: DetectBudget, seed: int,
          domain: Domain | None = None) -> DetectionReport:
    """Score gathered evidence against a calibration and word the verdict.

    ``domain`` is the checked model's family. Outside the calibration's the
    calibrated score is still reported, but the outcome rests on the
    reference-free score (:func:`cbpt_guard.detect.domain.domain_outcome`)
    and the report carries the "uncalibrated for this model family"
    statement. None (a caller that checks no family, such as verification's
    re-run on the same model) keeps the calibrated outcome.
    """
    value, zs = calib.score(evidence.features, calibration, evidence.targets)
    family_reports = tuple(FamilyReport(**asdict(f), z=zs.get(f.family)) for f in evidence.families)
    anomaly_report = AnomalyReport(**asdict(evidence.anomaly), z=zs.get("anomaly")) if evidence.anomaly else None
    skipped = evidence.skipped
    if value >= calibration.threshold:
        outcome = Outcome.FOUND
    else:
        outcome = Outcome.INCONCLUSIVE if skipped else Outcome.NOT_FOUND
    suspect = calib.suspected_target(zs, evidence.targets, calibration) if outcome is Outcome.FOUND else None
    differences = domain_differences(calibration.domain, domain) if domain is not None else []
    uncalibrated = (uncalibrated_statement(calibration.source, differences, calibrate_command(budget))
                    if differences else None)
    free = evidence.reference_free
    if uncalibrated:
        outcome = domain_outcome(outcome, uncalibrated, bool(free and free.found))
        suspect = free.target if outcome is Outcome.FOUND else None
    return DetectionReport(
        outcome=outcome, score=value, threshold=calibration.threshold, suspected_target=suspect,
        classes=evidence.classes, probe_tier=evidence.probes.tier, probe_count=evidence.probe_count,
        probe_source=evidence.probes.source, seed=seed, budget=_budget_dict(budget), calibration=calibration.source,
        families=family_reports, anomaly=anomaly_report, features=evidence.features, skipped=skipped,
        probe_files_skipped=tuple(evidence.probes.skipped), seconds=round(evidence.seconds, 2),
        reference_free=free.as_dict() if free else None, uncalibrated=uncalibrated)


def detect(model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...], *,
           calibration: calib.Calibration, probes: ProbeSet | None = None, budget: DetectBudget = DetectBudget(),
           seed: int = 0, text_embeddings: torch.Tensor | None = None, progress: Progress = silent,
           label: str = "detection", domain: Domain | None = None) -> DetectionReport:
    """Gather evidence and judge it (``domain``: the model's family, see :func:`judge`). Deterministic for a seed.

    Nothing that was skipped is ever reported as clean: a run with a skipped
    step and no evidence is "inconclusive". A calibration fitted at another
    budget is refused before any work (:func:`check_calibrated`).
    """
    check_calibrated(calibration, budget)
    evidence = gather_evidence(model, classes, templates, probes=probes, budget=budget, seed=seed,
                               text_embeddings=text_embeddings, progress=progress, label=label)
    return judge(evidence, calibration, budget, seed, domain)


def check_calibrated(calibration: calib.Calibration, budget: DetectBudget) -> None:
    """Raise :class:`UncalibratedBudgetError` unless ``calibration`` was fitted at ``budget``'s scoring settings.

    A score against statistics from another budget is not a calibrated score
    (cbpt_guard/detect/budget.py); the message says what differs and how to fit
    a calibration for this budget.
    """
    differences = budget_differences(calibration.budget, budget)
    if differences:
        raise UncalibratedBudgetError(uncalibrated_reason(calibration.source, budget, differences))


def _budget_dict(budget: DetectBudget) -> dict:
    data = asdict(budget)
    data["families"] = list(budget.families)
    return data
