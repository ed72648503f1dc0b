"""Zip archives in a model directory: a torch archive, a numpy ``.npz``, or something refused.

A zip is how ``torch.save`` (a ``data.pkl`` and raw storages), ``np.savez`` (one
``.npy`` per array) and many other formats (``.skops``, plain ``.zip``) package
files, and each reader takes different members from it. A torch archive has its
pickles scanned; an ``.npz`` has every member's header read and every object
array's pickle scanned. Any other zip could hold anything a consumer might load,
so it is refused; its pickle and ``.npy`` members are scanned first, so that an
archive carrying a payload is refused for that payload, by name.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass

from cbpt_guard.errors import MalformedCheckpointError
from cbpt_guard.intake.numpy_scan import (
    MAX_HEADER_BYTES,
    NUMPY_MAGIC,
    NpyScan,
    read_npy_header,
    scan_npy,
)
from cbpt_guard.intake.pickle_scan import (
    PickleScan,
    check_zip_layout,
    data_pkl_members,
    open_zip,
    printable,
    read_zip_member,
    scan_pickle,
    scan_torch_zip,
    starts_as_pickle,
)

# Enough of a member to read any .npy header numpy writes and to tell a pickle by its opcodes.
_HEAD_BYTES = 64 * 1024
_MAX_MEMBERS = 100_000
# Names other tools unpickle whatever their bytes: scanned even when they do not parse to a STOP.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".sav", ".npy", ".npz")


@dataclass(frozen=True)
class ZipScan:
    """A zip archive as scanned: ``kind`` is ``torch`` or ``npz``; one of the two scans is set."""

    kind: str
    torch: PickleScan | None = None
    arrays: tuple[NpyScan, ...] = ()

    @property
    def object_arrays(self) -> int:
        """How many of an ``.npz``'s arrays hold Python objects (a pickle each)."""
        return sum(1 for array in self.arrays if array.pickle is not None)


def scan_zip(data: bytes, origin: str) -> ZipScan:
    """Scan a zip archive as a torch archive or an ``.npz``, and refuse any other zip.

    Raises:
        UnsafeCheckpointError: a refused import in any member, or an archive built to mislead.
        MalformedCheckpointError: unreadable, or a zip that is neither a torch archive nor an ``.npz``.
    """
    archive, members = open_zip(data, origin)
    if len(members) > _MAX_MEMBERS:
        raise MalformedCheckpointError(f"{origin}: zip archive lists {len(members)} members")
    check_zip_layout(members, origin)
    if data_pkl_members(members):
        return ZipScan("torch", torch=scan_torch_zip(data, origin))
    arrays, others = [], []
    for member in members:
        where = f"{origin} (member {printable(member.filename)})"
        head = _member_head(archive, member, origin)
        if head.startswith(NUMPY_MAGIC):
            arrays.append(_scan_npy_member(archive, member, head, where, origin))
        elif not member.is_dir():
            others.append(member.filename)
            if starts_as_pickle(head) or member.filename.lower().endswith(PICKLE_SUFFIXES):
                scan_for_imports(read_zip_member(archive, member, origin), where)
    if not others:
        return ZipScan("npz", arrays=tuple(arrays))
    shown = ", ".join(printable(name) for name in others[:3]) + (", ..." if len(others) > 3 else "")
    raise MalformedCheckpointError(
        f"{origin}: refusing a zip archive that is neither a torch.save archive (no data.pkl) nor a numpy .npz "
        f"({len(others)} of its {len(members)} members are not .npy arrays: {shown}); cbpt-guard cannot vouch "
        "for what a consumer would load from it: move it out of the model directory, or save its arrays with "
        "np.savez or safetensors"
    )


def scan_for_imports(data: bytes, origin: str, *, container: str = "pickle") -> None:
    """Refuse bytes that would import something outside the allowlist if unpickled, parse or not.

    An unpickler runs each opcode as it reads it, so imports ahead of a parse
    error still run; they are refused. A parse error alone is no reason to
    refuse: such bytes are unreadable, to every unpickler.

    Raises:
        UnsafeCheckpointError: a refused import before the end or the parse error.
    """
    try:
        scan_pickle(data, origin, container=container)
    except MalformedCheckpointError:
        pass


def _member_head(archive: zipfile.ZipFile, member: zipfile.ZipInfo, origin: str, size: int = _HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of a member, enough to identify it, without decompressing all of it."""
    try:
        with archive.open(member) as stream:
            return stream.read(size)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, ValueError,
            zlib.error) as exc:
        raise MalformedCheckpointError(
            f"{origin}: cannot read zip member {printable(member.filename)}: {exc}"
        ) from None


def _scan_npy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, head: bytes, where: str,
                     origin: str) -> NpyScan:
    """Read a member's ``.npy`` header; the whole member only when it is an object array."""
    if len(head) == _HEAD_BYTES:  # a header longer than the head: read up to its bound
        head = _member_head(archive, member, origin, MAX_HEADER_BYTES + 16)
    header = read_npy_header(head, where)
    if not header.has_object:
        return NpyScan(header, None)
    return scan_npy(read_zip_member(archive, member, origin), where)
