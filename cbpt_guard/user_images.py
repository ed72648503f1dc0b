"""The user's image folders (``--probes``, ``--data``), loaded and checked before any expensive stage.

A folder that cannot serve is a usage error (exit 4) found right after intake,
not a surprise after minutes of detection; and the data tier a Verdict records
is the one the run really has: an empty or mistyped ``--data`` folder never
counts as few-shot, because it is refused before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbpt_guard.errors import CbptError, UsageError
from cbpt_guard.policy import DataTier
from cbpt_guard.verdict import DataInfo


@dataclass(frozen=True)
class UserImages:
    """The loaded folders: unlabelled probes (tier unlabelled) and the labelled few-shot set; None when not given."""

    probes: object | None = None  # a cbpt_guard.probes.ProbeSet
    data: object | None = None  # a cbpt_guard.probes.ProbeSet of tier few-shot, with labels


def check_folders(probes: str | Path | None, data: str | Path | None) -> None:
    """Each folder given exists and is a folder: the cheapest check, made before the policy's calibration is read."""
    for path, what in ((probes, "probe folder"), (data, "data folder")):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{path}: the {what} is not a directory")


def load_user_images(report, probes: str | Path | None, data: str | Path | None, *, probe_limit: int,
                     seed: int) -> UserImages:
    """Load the folders for the checkpoint described by ``report`` (its classes and image size), or raise UsageError.

    ``probes`` must hold at least one readable image (at most ``probe_limit``
    are kept, a seeded choice). ``data`` must be an ImageFolder whose
    subfolders are exactly the model's class names, each with at least one
    readable image: the message names every folder that names no class and
    every class without a folder.
    """
    from cbpt_guard.probes import class_folder_problems, fewshot_folder, folder_probes

    side = report.image_size[0]
    probe_set = data_set = None
    if probes is not None:
        try:
            probe_set = folder_probes(probes, side, limit=probe_limit, seed=seed)
        except CbptError as error:
            raise UsageError(f"--probes {probes}: {_unprefixed(error, probes)}") from None
    if data is not None:
        problems = class_folder_problems(data, report.classes)
        if problems:
            raise UsageError(f"--data {data}: {problems}")
        try:
            data_set = fewshot_folder(data, side, report.classes, seed=seed)
        except CbptError as error:
            raise UsageError(f"--data {data}: {_unprefixed(error, data)}") from None
        empty = [name for index, name in enumerate(report.classes) if not bool((data_set.labels == index).any())]
        if empty:
            raise UsageError(f"--data {data}: no readable image for class(es) {empty}")
    return UserImages(probe_set, data_set)


def data_info(probes: str | Path | None, data: str | Path | None, images: UserImages) -> DataInfo:
    """The Verdict's data record: the folders the run was given, and as its tier what was really loaded.

    Few-shot only with a loaded labelled set, unlabelled only with loaded probes: a
    run that stopped before reading them (an unloadable model) still names the
    folders, at the zero-data tier it reached.
    """
    tier = (DataTier.FEW_SHOT if images.data is not None else DataTier.UNLABELLED if images.probes is not None
            else DataTier.ZERO_DATA)
    skipped = tuple(images.probes.skipped) if images.probes is not None else ()
    return DataInfo(tier=tier.value, probes=str(probes) if probes is not None else "procedural",
                    labelled=str(data) if data is not None else None, probe_files_skipped=skipped)


def _unprefixed(error: CbptError, path: str | Path) -> str:
    """An error's message without the folder name it starts with (the caller names the flag and the folder)."""
    message = str(error)
    prefix = f"{Path(path)}: "
    return message[len(prefix):] if message.startswith(prefix) else message
