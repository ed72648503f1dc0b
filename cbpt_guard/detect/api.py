"""Detection from a checkpoint path: the functions the CLI and the pipeline call."""

from __future__ import annotations

from pathlib import Path

from cbpt_guard.detect import calibration as calib
from cbpt_guard.device import resolve
from cbpt_guard.detect.budget import scoring_settings
from cbpt_guard.detect.domain import domain_differences, domain_of_loaded
from cbpt_guard.detect.run import DetectBudget, DetectionReport, check_calibrated, detect, gather_evidence
from cbpt_guard.progress import Progress, silent
from cbpt_guard.errors import UsageError
from cbpt_guard.intake import load_checkpoint
from cbpt_guard.probes import folder_probes

DEFAULT_CALIBRATION = calib.BUILTIN


def default_calibration() -> calib.Calibration:
    """The calibration shipped with the package (:func:`cbpt_guard.detect.calibration.builtin_calibration`)."""
    return calib.builtin_calibration()


def detect_checkpoint(path: str | Path, *, arch: str | None = None, classes_file: str | Path | None = None,
                      probes_dir: str | Path | None = None, calibration_path: str | Path | None = None,
                      budget: DetectBudget = DetectBudget(), seed: int = 0,
                      progress: Progress = silent, device: str | None = None) -> DetectionReport:
    """Load ``path`` safely and run detection on it; see :func:`cbpt_guard.detect.run.detect`.

    ``device`` (auto, cpu, cuda; None is auto) is where it runs. A calibration
    fitted at another budget, or a device that is not there, is refused before
    the checkpoint is even loaded.
    """
    calibration = calib.load_calibration(calibration_path) if calibration_path else default_calibration()
    check_calibrated(calibration, budget)
    where = resolve(device).torch()
    loaded = load_checkpoint(path, arch=arch, classes_file=classes_file)
    loaded.model.to(where)
    report = loaded.report
    report.require_classes(path)
    probes = folder_probes(probes_dir, report.image_size[0], limit=budget.probes, seed=seed) if probes_dir else None
    return detect(loaded.model, report.classes, report.templates, calibration=calibration, probes=probes,
                  budget=budget, seed=seed, progress=progress, domain=domain_of_loaded(loaded))


def calibrate_models(paths: list[str | Path], *, budget: DetectBudget = DetectBudget(), seed: int = 0,
                     progress: Progress = silent, device: str | None = None) -> calib.Calibration:
    """Run the detector over clean reference models (on ``device``) and fit the calibration to what they show.

    The calibration records the references' family (``detect.domain``) and
    their weights' digests; references of two families are refused, since
    one set of statistics cannot describe both.
    """
    where = resolve(device).torch()
    references, targets, digests, family = {}, {}, {}, None
    for path in paths:
        progress(f"calibrating on {path}")
        loaded = load_checkpoint(path)
        loaded.model.to(where)
        loaded.report.require_classes(path, remedy="add cbpt_manifest.json")
        domain = domain_of_loaded(loaded)
        differences = domain_differences(family, domain) if family else []
        if differences:  # before this reference's detection run: the refusal costs one model load
            raise UsageError(f"{path}: another model family than {paths[0]} ({'; '.join(differences)}): "
                             "calibrate each family on its own clean models")
        family = family or domain
        evidence = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates, budget=budget,
                                   seed=seed, progress=progress)
        references[str(path)] = evidence.features
        targets[str(path)] = evidence.targets
        digests[str(path)] = loaded.report.checkpoint_sha256
    return calib.fit(references, reference_targets=targets, budget=scoring_settings(budget), domain=family,
                     reference_sha256=digests)
