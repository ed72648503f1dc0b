"""The Verdict's record of the checkpoint: from intake's report, or from the bare files when intake refused them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cbpt_guard.intake.report import CheckpointReport
from cbpt_guard.intake.walk import model_files
from cbpt_guard.verdict import CheckpointInfo, FileDigest

WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"})


def checkpoint_info(model: str | Path, report: CheckpointReport) -> CheckpointInfo:
    """What was checked, as intake loaded it: its digest (the waiver scope), architecture, classes and files."""
    return CheckpointInfo(
        path=str(model), digest=report.checkpoint_sha256, architecture=report.architecture, layout=report.layout,
        parameter_count=report.parameter_count, image_size=report.image_size, classes=report.classes,
        classes_source=report.classes_source, templates=report.templates,
        files=tuple(FileDigest(path=f.path, size=f.size, sha256=f.sha256, kind=f.kind, role=f.role)
                    for f in report.files))


def unloaded_checkpoint(model: str | Path) -> CheckpointInfo:
    """What can be said of a checkpoint that was not loaded: its files and their digests, read as bytes only.

    The files are the ones intake would read (:func:`cbpt_guard.intake.walk.model_files`): a link out of
    the folder is not followed here either.
    """
    root = Path(model)
    paths = model_files(root).files if root.is_dir() else ((root,) if root.is_file() else ())
    files, digest = [], ""
    for path in paths:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        weights = path.suffix.lower() in WEIGHT_SUFFIXES
        files.append(FileDigest(path=path.relative_to(root).as_posix() if root.is_dir() else path.name,
                                size=path.stat().st_size, sha256=sha, kind="unread",
                                role="weights" if weights else "other"))
        if weights and not digest:
            digest = sha
    return CheckpointInfo(path=str(model), digest=digest, architecture="unknown", layout="unknown",
                          parameter_count=0, image_size=(0, 0), classes=(), classes_source=None, templates=(),
                          files=tuple(files), unsafe_findings=())
