"""What identifies a checkpoint and a finished check: SHA-256 digests over bytes, never over names or times.

A checkpoint's digest covers every file in it (path and content), so the same
bytes copied under two names are scanned once, and any change is a new model.
A finished check is stored under a key that also covers the policy (its
digest), the calibration the policy names (its digest), the tool version and
the run's other inputs (seed, data folders, class list): change any of them
and the stored verdict no longer applies, so it is checked again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cbpt_guard.sweeper.records import FileEntry

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def digest_files(path: Path) -> tuple[str, tuple[FileEntry, ...]]:
    """The digest of a checkpoint (a folder's regular files, or one file) and the files it covers."""
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        entries = tuple(FileEntry(p.relative_to(path).as_posix(), p.stat().st_size, sha256_file(p)) for p in paths)
    else:
        entries = (FileEntry(path.name, path.stat().st_size, sha256_file(path)),)
    listing = "".join(f"{entry.sha256}  {entry.path}\n" for entry in entries)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest(), entries


def folder_digest(path: str | Path | None) -> str | None:
    """The digest of an input folder or file (few-shot data, probes, a class list), or None when not given."""
    if path is None:
        return None
    return digest_files(Path(path))[0]


def calibration_digest(loaded_policy) -> str:
    """The SHA-256 of the calibration the policy's detection uses: its file, or the built-in one.

    A policy with a fixed ``score_threshold`` uses the built-in statistics at that
    bar; the threshold itself is part of the policy digest.
    """
    section = loaded_policy.policy.detection
    if section.calibration is not None and section.calibration != "builtin":
        return sha256_file(Path(loaded_policy.calibration_path))
    from importlib import resources

    from cbpt_guard.detect.calibration import BUILTIN

    return hashlib.sha256((resources.files("cbpt_guard.detect") / "calibrations" / BUILTIN).read_bytes()).hexdigest()


def store_key(files_digest: str, policy_digest: str, calibration: str, tool_version: str, options: dict) -> str:
    """The content address of one finished check: a SHA-256 over everything its verdict depends on."""
    document = {"files": files_digest, "policy": policy_digest, "calibration": calibration, "tool": tool_version,
                "options": options}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()
