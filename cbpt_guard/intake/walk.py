"""Which files of a model folder any stage may read: the one rule, shared by loading and by describing a refusal.

A model folder is flat: its regular files are read, and nothing else is
followed. A symbolic link could point out of the folder (at a secret, a
device, another model), and a subfolder is no part of either model layout,
so both are listed as skipped with the reason and never opened. The loader
and the description of a checkpoint that could not be loaded read the same
files, so a report never lists (or hashes) a file intake refused to follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbpt_guard.errors import UsageError
from cbpt_guard.intake.report import SkippedItem

MAX_DIRECTORY_FILES = 256
"""More entries than any model folder holds: a folder past it is refused before any file is read."""


@dataclass(frozen=True)
class Listing:
    """A model folder's regular files (sorted by name) and what was left alone, with why."""

    files: tuple[Path, ...]
    skipped: tuple[SkippedItem, ...]


def model_files(target: Path) -> Listing:
    """The regular files directly inside ``target``; links, subfolders and special files skipped, never followed.

    Raises :class:`~cbpt_guard.errors.UsageError` for a folder with more than
    :data:`MAX_DIRECTORY_FILES` entries.
    """
    entries = sorted(target.iterdir())
    if len(entries) > MAX_DIRECTORY_FILES:
        raise UsageError(f"{target}: {len(entries)} entries is more than the {MAX_DIRECTORY_FILES} a model holds")
    files, skipped = [], []
    for entry in entries:
        if entry.is_symlink():
            skipped.append(SkippedItem(path=str(entry), reason="symbolic link, not followed"))
        elif entry.is_dir():
            skipped.append(SkippedItem(path=str(entry), reason="subdirectory, not part of a model layout"))
        elif entry.is_file():
            files.append(entry)
        else:
            skipped.append(SkippedItem(path=str(entry), reason="not a regular file"))
    return Listing(tuple(files), tuple(skipped))
