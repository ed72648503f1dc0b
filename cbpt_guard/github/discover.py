"""Which checkpoints to gate: from a pull request's changed files, or from paths and globs.

File names come from an untrusted source (a pull request's file list, a workflow
input), so every candidate is checked to stay inside the repository root, symlinks
resolved, before it becomes a target. No shell ever sees these names: globs are
expanded here with :mod:`glob`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cbpt_guard.errors import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
"""Suffixes of files that hold weights; a change to one of them changes a checkpoint."""
SERIALISED_SUFFIXES = WEIGHT_SUFFIXES + (".pkl", ".pickle", ".dill", ".joblib", ".sav", ".npy", ".npz", ".pt2",
                                         ".mar", ".msgpack", ".h5", ".hdf5", ".keras", ".onnx", ".gguf")
"""Suffixes of serialised objects (pickles and their alikes, NumPy, torch, other model formats).

A loose file with one of these is a target of its own: a side pickle is as
dangerous as the weights it sits beside, so the gate loads it (and refuses it, or
says it cannot be scanned) rather than skip it.
"""
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
    """Whether a file of this name is a checkpoint candidate on its own: serialised data, a model config or manifest."""
    base = PurePosixPath(name).name.lower()
    return base.endswith(SERIALISED_SUFFIXES) or base in CONFIG_NAMES or base in MANIFEST_NAMES


def is_serialised_file(name: str) -> bool:
    """Whether a file of this name holds serialised data (weights, a pickle or an alike) and is loaded as such."""
    return PurePosixPath(name).name.lower().endswith(SERIALISED_SUFFIXES)


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

    A changed file of any kind (added, modified, renamed or removed) inside a
    model folder (one with a model config, at any depth below it) re-gates that
    folder, the nearest one up: a side pickle, a new ``.npy`` or a removed
    manifest changes what the folder deploys. A file that is not directly in a
    model folder (the loader reads a folder one level deep) is also a target by
    itself when its name says it holds serialised data
    (:data:`SERIALISED_SUFFIXES`). A name given as an absolute path inside
    ``root`` is taken relative to it; a name that leaves ``root`` (an absolute
    path elsewhere, ``..``, a symlink pointing out) is a :class:`UsageError`,
    never skipped. The result is sorted and has no duplicates.
    """
    base = Path(root).resolve()
    targets: set[str] = set()
    for change in changes:
        relative = _relative_inside(change.filename, base)
        file_path = base / relative
        if not _inside(file_path, base):
            raise UsageError(f"changed file {change.filename!r} leads outside the repository root {str(base)!r} "
                             "(through a symlink)")
        folder = _model_folder_of(file_path, base)
        loose = change.status != "removed" and is_serialised_file(relative.name) and file_path.is_file()
        # A model folder is read one level deep: a serialised file further down is a target of its own as well.
        found = ([folder] if folder is not None else []) + ([file_path] if loose and folder != file_path.parent
                                                             else [])
        for target in found:
            if not _inside(target, base):
                raise UsageError(f"changed file {change.filename!r} leads outside the repository root "
                                 f"{str(base)!r} (through a symlink)")
            targets.add(target.resolve().relative_to(base).as_posix() or ".")
    return sorted(targets)


def _model_folder_of(path: Path, base: Path) -> Path | None:
    """The nearest folder holding ``path``, up to ``base`` itself, that has a model config; None when there is none."""
    for folder in path.parents:
        if has_model_config(folder):
            return folder
        if folder == base:
            break
    return None


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


def _relative_inside(name: str, base: Path) -> PurePosixPath:
    """``name`` as a path relative to ``base``; an absolute path inside ``base`` is made relative to it.

    Raises :class:`UsageError` for an empty name, or one that is absolute
    elsewhere or climbs out with ``..``: a file the gate cannot place in the
    repository must not pass unchecked.
    """
    path = PurePosixPath(name)
    if not name or not path.parts:
        raise UsageError("a changed file with an empty name")
    if path.is_absolute():
        absolute = Path(os.path.normpath(name))
        for candidate in (absolute, absolute.parent.resolve() / absolute.name):
            with contextlib.suppress(ValueError):
                return PurePosixPath(candidate.relative_to(base).as_posix())
        raise UsageError(f"changed file {name!r} is outside the repository root {str(base)!r}")
    if ".." in path.parts:
        raise UsageError(f"changed file {name!r} climbs out with '..'; give paths relative to the repository root")
    return path


def _inside(path: Path, base: Path) -> bool:
    """Whether ``path``, symlinks resolved, is ``base`` or lies under it."""
    try:
        path.resolve().relative_to(base)
    except ValueError:
        return False
    return True
