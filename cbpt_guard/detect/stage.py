"""Detection as the pipeline runs it: the policy's budget and calibration, the run, and the Verdict's view of it.

:func:`run_detection` raises whatever detection raises; the pipeline records
every error the same way (a failed or skipped step), so a crash is never read
as "no evidence".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cbpt_guard.detect.budget import DetectBudget, budget_differences, uncalibrated_reason
from cbpt_guard.detect.calibration import Calibration, builtin_calibration, load_calibration
from cbpt_guard.detect.domain import Domain
from cbpt_guard.policy import LoadedPolicy
from cbpt_guard.progress import Progress
from cbpt_guard.verdict import DetectionInfo, FamilyEvidence

if TYPE_CHECKING:  # run imports torch; the pipeline imports this module before any model is loaded
    from cbpt_guard.detect.run import DetectionReport, Evidence


def detect_budget(loaded: LoadedPolicy) -> DetectBudget:
    """The detection budget a policy sets: steps and batch per inversion, families, targeted classes, time limit.

    The time limit bounds the whole detection run; it only aborts a run that
    would overrun it (inconclusive) and never shortens a stage.
    """
    section = loaded.policy.detection
    default = DetectBudget()
    inversion = replace(default.inversion, steps=section.budget.steps, batch_size=section.budget.batch_size)
    return replace(default, families=tuple(f.value for f in section.families), inversion=inversion,
                   targeted_classes=section.budget.targeted_classes, time_limit_s=section.budget.time_limit_s,
                   anomaly_classes=section.budget.anomaly_classes)


def policy_calibration(loaded: LoadedPolicy) -> Calibration:
    """The calibration a policy names: ``builtin``, a file beside the policy, or the built-in stats at a fixed bar."""
    section = loaded.policy.detection
    if section.calibration == "builtin":
        return builtin_calibration()
    if section.calibration is not None:
        return load_calibration(loaded.calibration_path)
    return replace(builtin_calibration(), threshold=section.score_threshold)


def uncalibrated_budget(loaded: LoadedPolicy) -> str | None:
    """Why the policy's calibration does not apply to its detection budget, or None when it does.

    Read before any model is loaded, so a mismatched policy ends the run fast
    (detection skipped, inconclusive) with the command that fits a calibration.
    """
    budget = detect_budget(loaded)
    calibration = policy_calibration(loaded)
    differences = budget_differences(calibration.budget, budget)
    return uncalibrated_reason(calibration.source, budget, differences) if differences else None


@dataclass(frozen=True)
class DetectionStage:
    """What the detection stage hands on: the evidence (purification trains on its triggers), the report, its view."""

    evidence: Evidence
    calibration: Calibration
    report: DetectionReport
    info: DetectionInfo


def run_detection(model, report, probes, loaded: LoadedPolicy, *, seed: int, progress: Progress,
                  domain: Domain | None = None) -> DetectionStage:
    """Invert triggers on the checkpoint ``report`` describes, at the policy's budget; judge them by its calibration.

    ``domain`` is the checkpoint's model family: outside the calibration's, the
    outcome rests on the reference-free score (:func:`cbpt_guard.detect.run.judge`).
    """
    from cbpt_guard.detect.run import gather_evidence, judge

    budget = detect_budget(loaded)
    calibration = policy_calibration(loaded)
    evidence = gather_evidence(model, report.classes, report.templates, probes=probes, budget=budget, seed=seed,
                               progress=progress)
    detection = judge(evidence, calibration, budget, seed, domain)
    return DetectionStage(evidence, calibration, detection, detection_info(detection, calibration))


def detection_info(report: DetectionReport, calibration: Calibration) -> DetectionInfo:
    """The Verdict's view of a DetectionReport (wall-clock fields left out; they go to ``timings``)."""
    families = tuple(FamilyEvidence(family=f.family, collapsed=f.collapsed, size=f.size, target=f.target,
                                    concentration=f.concentration, entropy=f.entropy, inverted_asr=f.inverted_asr,
                                    histogram=f.histogram, z=f.z, steps_run=f.steps_run,
                                    budget_exhausted=False, images=dict(f.images))
                     for f in report.families)
    return DetectionInfo(outcome=report.outcome.value, score=report.score, threshold=report.threshold,
                         suspected_target=report.suspected_target, calibration=report.calibration,
                         calibration_scores=tuple(calibration.reference_scores), families=families,
                         anomaly_index=report.anomaly.anomaly_index if report.anomaly else None,
                         anomaly_suspect=report.anomaly.suspect if report.anomaly else None,
                         features=dict(report.features), seed=report.seed, budget=report.budget,
                         skipped=report.skipped, reference_free=report.reference_free,
                         uncalibrated=report.uncalibrated)
