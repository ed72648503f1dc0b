"""Read numpy ``.npy`` headers by hand and scan object arrays' pickles, never calling ``np.load``.

An ``.npy`` file is a magic string, a version, a header that is a Python dict
literal (``descr``, ``fortran_order``, ``shape``), then the data. For a numeric
dtype the data is raw bytes and nothing can run. For a dtype that holds Python
objects the data is a pickle, which ``np.load(allow_pickle=True)`` unpickles
(and that option lifts numpy's header-size limit too). Such a pickle is scanned
like every other one, through the same allowlist: an object array of strings or
numbers imports nothing beyond numpy's array rebuilding and passes; one that
imports anything else is refused and named.
"""

from __future__ import annotations

import ast
import struct
from dataclasses import dataclass

from cbpt_guard.errors import MalformedCheckpointError
from cbpt_guard.intake.pickle_scan import PickleScan, scan_pickle

NUMPY_MAGIC = b"\x93NUMPY"
# (major, minor) -> (bytes of the header length, encoding of the header), as numpy writes them.
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
# numpy refuses headers over 10,000 bytes unless allow_pickle=True, which lifts the
# limit; a bound is still needed to keep literal parsing cheap on any input.
MAX_HEADER_BYTES = 1024 * 1024
_KEYS = frozenset({"descr", "fortran_order", "shape"})
OBJECT_ARRAY_CONTAINER = "numpy object array (a pickle that np.load(allow_pickle=True) runs)"


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header says; ``data_offset`` is where the data (or the pickle) starts."""

    version: tuple[int, int]
    dtype: str
    shape: tuple[int, ...]
    fortran_order: bool
    has_object: bool
    data_offset: int


@dataclass(frozen=True)
class NpyScan:
    """One ``.npy`` array as scanned: its header, and the scan of its pickle if it is an object array."""

    header: NpyHeader
    pickle: PickleScan | None


def read_npy_header(head: bytes, origin: str) -> NpyHeader:
    """Parse an ``.npy`` header from the file's first bytes (at least the whole header).

    Raises:
        MalformedCheckpointError: not an ``.npy`` header numpy would accept.
    """
    if not head.startswith(NUMPY_MAGIC) or len(head) < 8:
        raise MalformedCheckpointError(f"{origin}: not a numpy .npy file")
    version = (head[6], head[7])
    if version not in _VERSIONS:
        raise MalformedCheckpointError(f"{origin}: unknown .npy format version {version[0]}.{version[1]}")
    length_format, encoding = _VERSIONS[version]
    start = 8 + struct.calcsize(length_format)
    if len(head) < start:
        raise MalformedCheckpointError(f"{origin}: .npy header is truncated")
    (length,) = struct.unpack(length_format, head[8:start])
    if length > MAX_HEADER_BYTES:
        raise MalformedCheckpointError(f"{origin}: .npy header of {length} bytes is over {MAX_HEADER_BYTES}")
    if len(head) < start + length:
        raise MalformedCheckpointError(f"{origin}: .npy header is truncated")
    literal = _parse_literal(head[start : start + length], encoding, origin)
    descr, shape, fortran_order = _checked_fields(literal, origin)
    dtype = _dtype(descr, origin)
    return NpyHeader(version, str(dtype), shape, fortran_order, bool(dtype.hasobject), start + length)


def scan_npy(data: bytes, origin: str) -> NpyScan:
    """Scan a whole ``.npy`` file: its header, and its pickle when it is an object array.

    Raises:
        UnsafeCheckpointError: the object array's pickle imports something outside the allowlist.
        MalformedCheckpointError: the header or the pickle does not parse.
    """
    header = read_npy_header(data, origin)
    if not header.has_object:
        return NpyScan(header, None)
    scan = scan_pickle(data[header.data_offset :], origin, container=OBJECT_ARRAY_CONTAINER)
    return NpyScan(header, scan)


def _parse_literal(raw: bytes, encoding: str, origin: str) -> object:
    """The header's dict literal, parsed as numpy does (``ast.literal_eval``), never evaluated."""
    try:
        return ast.literal_eval(raw.decode(encoding))
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise MalformedCheckpointError(f"{origin}: .npy header is not a literal: {detail}") from None


def _checked_fields(literal: object, origin: str) -> tuple[object, tuple[int, ...], bool]:
    """The three keys numpy requires, with the types it requires."""
    if not isinstance(literal, dict) or set(literal) != _KEYS:
        raise MalformedCheckpointError(f"{origin}: .npy header is not a dict of descr, fortran_order and shape")
    shape, fortran_order = literal["shape"], literal["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise MalformedCheckpointError(f"{origin}: .npy header shape is not a tuple of sizes")
    if not isinstance(fortran_order, bool):
        raise MalformedCheckpointError(f"{origin}: .npy header fortran_order is not a boolean")
    return literal["descr"], shape, fortran_order


def _dtype(descr: object, origin: str):
    """The dtype numpy would build from ``descr`` (its own ``descr_to_dtype``: no import, no pickle)."""
    from numpy.lib.format import descr_to_dtype

    if not isinstance(descr, (str, list, tuple)):
        raise MalformedCheckpointError(f"{origin}: .npy header descr is not a dtype description")
    try:
        return descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise MalformedCheckpointError(f"{origin}: .npy header descr is not a dtype: {detail}") from None
