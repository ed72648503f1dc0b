"""The export as the pipeline runs it: the classifier that passes, exported to ONNX with its provenance and parity.

:func:`run_export` raises whatever the export raises; the pipeline records
the failure, and :func:`failed_export_info` keeps what the Verdict says of an
export that failed (the parity numbers that condemned it, or the error).
"""

from __future__ import annotations

from pathlib import Path

from cbpt_guard.policy.schema import ExportSettings
from cbpt_guard.progress import Progress
from cbpt_guard.verdict import ExportInfo

ONNX_FILE = "classifier.onnx"


def run_export(model, report, class_embeddings, settings: ExportSettings, provenance: dict[str, str], out: Path, *,
               seed: int, progress: Progress) -> ExportInfo:
    """Export the purified classifier (``class_embeddings`` (C, d)) or, with None, the hand-written one.

    ``provenance`` is stamped into the file; fp16 has its own, looser default
    tolerance (the policy's figure is for float32).
    """
    from cbpt_guard.classifier import ZeroShotClassifier, build_classifier
    from cbpt_guard.export import export_classifier

    classifier = (build_classifier(model, report.classes, report.templates) if class_embeddings is None
                  else ZeroShotClassifier(model, class_embeddings))
    result = export_classifier(classifier, out / ONNX_FILE, classes=report.classes, provenance=provenance,
                               fp16=settings.fp16, tolerance=None if settings.fp16 else settings.parity_tolerance,
                               seed=seed, progress=progress)
    return result.to_export_info(relative_to=out)


def failed_export_info(error: BaseException, settings: ExportSettings, *, purified: bool, out: Path) -> ExportInfo:
    """What the Verdict records of a failed export: a parity failure keeps its numbers, anything else its error."""
    from cbpt_guard.export.onnx_export import ParityError

    if isinstance(error, ParityError):  # exported but unfaithful: keep the numbers that condemned it
        return error.result.to_export_info(relative_to=out, error=str(error))
    return ExportInfo(path=None, sha256=None, purified=purified, fp16=settings.fp16, provider=None, max_abs_diff=None,
                      max_rel_diff=None, top1_agreement=None, tolerance=settings.parity_tolerance, passed=False,
                      error=str(error))
