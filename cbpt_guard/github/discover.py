"""Which checkpoints to gate: from a pull request's changed files, or from paths and globs.

File names come from an untrusted source (a pull request's file list, a workflow
input), so every candidate is checked to stay inside the repository root, symlinks
resolved, before it becomes a target. No shell ever sees these names: globs are
expanded here with :mod:`glob`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cbpt_guard.errors import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
"""Suffixes of files that hold weights; a change to one of them changes a checkpoint."""
CONFIG_NAMES = ("open_clip_config.json", "config.json")
"""Files whose presence makes a folder a model folder."""
MANIFEST_NAMES = ("cbpt_manifest.json", "preprocessor_config.json")
"""Files that change what a checkpoint is deployed as (classes, templates, preprocessing)."""


@dataclasses.dataclass(frozen=True)
class ChangedFile:
    """One file of a pull request, as the API lists it (``status``: added, modified, renamed, removed, ...)."""

    filename: str
    status: str = "modified"


def is_checkpoint_file(name: str) -> bool:
    """Whether a file of this name belongs to a checkpoint: weights, a model config or a deployment manifest."""
    base = PurePosixPath(name).name
    return base.endswith(WEIGHT_SUFFIXES) or base in CONFIG_NAMES or base in MANIFEST_NAMES


def is_model_dir(folder: Path) -> bool:
    """Whether ``folder`` holds a model: a model config, or at least one weights file."""
    return folder.is_dir() and (has_model_config(folder) or _has_weights(folder))


def has_model_config(folder: Path) -> bool:
    """Whether ``folder`` has an open_clip config, or a ``config.json`` beside weights.

    A lone ``config.json`` is far too common a name (editor settings, app
    configs) to make a folder a model on its own.
    """
    if (folder / "open_clip_config.json").is_file():
        return True
    return (folder / "config.json").is_file() and _has_weights(folder)


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(c.is_file() and c.name.endswith(WEIGHT_SUFFIXES) for c in folder.iterdir())


def checkpoints_from_changes(changes: Iterable[ChangedFile], root: str | os.PathLike[str]) -> list[str]:
    """The checkpoints, as paths relative to ``root``, that a set of changed files adds or changes.

    A changed file counts when :func:`is_checkpoint_file` says so and it was not
    removed. Its target is its folder when that folder has a model config (the
    whole model is re-checked when any of its files changes); a weights file in
    a folder without one is a target by itself. Names that leave ``root`` (an
    absolute path, ``..``, a symlink pointing out) are dropped. The result is
    sorted and has no duplicates.
    """
    base = Path(root).resolve()
    targets: set[str] = set()
    for change in changes:
        if change.status == "removed" or not is_checkpoint_file(change.filename):
            continue
        relative = _safe_relative(change.filename)
        if relative is None:
            continue
        file_path = base / relative
        folder = file_path.parent
        if has_model_config(folder):
            target = folder
        elif file_path.name.endswith(WEIGHT_SUFFIXES) and file_path.is_file():
            target = file_path
        else:
            continue  # a manifest or config without a model beside it: nothing to load
        if _inside(target, base):
            targets.add(target.relative_to(base).as_posix() or ".")
    return sorted(targets)


def find_models(patterns: Iterable[str], root: str | os.PathLike[str]) -> list[str]:
    """Expand model paths or globs (relative to ``root``) into checkpoint targets, in the order given.

    Each pattern is a path or a glob (``**`` allowed); a match is kept when it
    is a model folder, a model config (standing for its folder) or a weights
    file inside ``root``. A pattern that matches
    nothing usable is a :class:`UsageError` naming it, so a typo in a workflow
    never turns into a silent pass.
    """
    base = Path(root).resolve()
    found: list[str] = []
    for pattern in patterns:
        if not pattern:
            continue
        matches = sorted(glob.glob(pattern, root_dir=base, recursive=True)) if glob.has_magic(pattern) else [pattern]
        usable = []
        for match in matches:
            path = Path(match) if Path(match).is_absolute() else base / match
            if not _inside(path, base):
                raise UsageError(f"model path {pattern!r} is outside the repository root {str(base)!r}")
            if path.is_file() and path.name in CONFIG_NAMES:
                path = path.parent  # a model config names its folder
            if is_model_dir(path) or (path.is_file() and path.name.endswith(WEIGHT_SUFFIXES)):
                usable.append(path.resolve().relative_to(base).as_posix() or ".")
        if not usable:
            raise UsageError(f"model path {pattern!r} matches no model folder or weights file under {str(base)!r}")
        found.extend(u for u in usable if u not in found)
    return found


def split_patterns(text: str) -> list[str]:
    """Split a workflow input into model patterns: one per line, surrounding blanks dropped.

    Newlines separate patterns (not spaces), so a path with spaces stays whole.
    """
    return [line.strip() for line in text.splitlines() if line.strip()]


def _safe_relative(name: str) -> PurePosixPath | None:
    """``name`` as a relative POSIX path with no ``..``; None when it is absolute or climbs out."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


def _inside(path: Path, base: Path) -> bool:
    """Whether ``path``, symlinks resolved, is ``base`` or lies under it."""
    try:
        path.resolve().relative_to(base)
    except ValueError:
        return False
    return True
