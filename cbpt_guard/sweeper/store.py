"""The content-addressed store that makes a sweep resumable and incremental.

Each finished model is one folder ``store/<key>/`` (the key from
:func:`cbpt_guard.sweeper.identity.store_key`) holding its ``entry.json`` (the
outcome the sweep needs) and, when a check ran, its reports (``verdict.json``,
``report.html``, ...). A folder is written in full under a temporary name,
flushed to disk, and renamed into place in one step: a sweep killed at any
moment (SIGKILL included) leaves either the whole entry or none of it, so a
resumed sweep re-scans exactly what had not finished. Leftover temporary
folders are removed on the next open.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

ENTRY = "entry.json"
TEMP_PREFIX = ".partial-"


class ResultStore:
    """Finished checks by key, under ``root``; only the sweep's driver writes here."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def get(self, key: str) -> dict | None:
        """The stored entry for ``key``, or None when that check never finished (or its entry is unreadable)."""
        try:
            return json.loads((self.root / key / ENTRY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def folder(self, key: str) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists yet)."""
        return self.root / key

    def put(self, key: str, entry: dict, files: dict[str, bytes]) -> Path:
        """Store ``entry`` and the report ``files`` (relative name -> bytes) for ``key``, all or nothing.

        A key already present is replaced (a failed entry retried with
        ``--retry-failed``): the new folder is complete before the old one goes.
        """
        temp = self.root / f"{TEMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        for name, content in {**files, ENTRY: json.dumps(entry, sort_keys=True).encode("utf-8")}.items():
            target = temp / name
            if target.resolve().parent != temp.resolve() and temp.resolve() not in target.resolve().parents:
                raise ValueError(f"report file name {name!r} leaves the entry's folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        final = self.root / key
        if final.exists():
            old = self.root / f"{TEMP_PREFIX}old-{key}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(temp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, final)
        _fsync_dir(self.root)
        return final


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: flush the folder's own entry list (a no-op where the platform cannot)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
