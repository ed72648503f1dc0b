"""Identify a checkpoint file by its bytes, never by its name.

A file called ``model.safetensors`` may hold a pickle, and a ``.bin`` may be a zip:
what decides how a file is read (and which safety checks run) is what its first
bytes say. Pickles are recognised by their opcodes, so the header-less protocols 0
and 1 are pickles too. A file that two readers would parse differently, such as a
pickle with a zip archive appended, is a polyglot; :func:`is_polyglot` finds those
so that the reader can refuse them.
"""

from __future__ import annotations

import enum
import io
import struct
import zipfile

from cbpt_guard.intake.pickle_scan import starts_as_pickle

ZIP_LOCAL_MAGIC = b"PK\x03\x04"
"""The zip local-file header signature; ``torch.save`` archives start with it."""

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The integer that the first pickle of a legacy (pre-zip) ``torch.save`` file holds."""

NUMPY_MAGIC = b"\x93NUMPY"
"""The first bytes of a numpy ``.npy`` file (``np.save``)."""

_PICKLE_PROTO = 0x80
_PICKLE_PROTOCOLS = range(2, 6)
# safetensors pads its header with spaces to 8-byte alignment; more is not its framing.
_MAX_HEADER_PADDING = 4096


class FileKind(str, enum.Enum):
    """What a file's bytes are, as far as a checkpoint reader is concerned."""

    SAFETENSORS = "safetensors"
    """A little-endian u64 header length, then a JSON header: no code can run."""
    TORCH_ZIP = "torch_zip"
    """A zip archive (``torch.save`` since 1.6): pickles inside, to be scanned."""
    PICKLE = "pickle"
    """A bare pickle stream, or a legacy ``torch.save`` file (several pickles, then raw data)."""
    NUMPY = "numpy"
    """A ``.npy`` array: a literal header, then raw data, or a pickle for object arrays."""
    OTHER = "other"
    """Anything else: not a checkpoint this tool reads."""


def sniff(data: bytes) -> FileKind:
    """Classify ``data`` by its leading bytes.

    A file whose safetensors framing holds (a header length that fits, a header
    from ``{`` to ``}``) is safetensors, even when its first bytes also happen to
    read as a pickle (a header of 640 bytes starts ``\x80\x02``, one of 11,912
    bytes is the pickle ``True``): readers of such files must also scan that
    pickle (:func:`cbpt_guard.intake.pickle_scan.starts_as_pickle` says whether
    there is one). Otherwise a PROTO 2-5 header, or opcodes that walk to a STOP
    (protocols 0 and 1), make a pickle.
    """
    if data.startswith(ZIP_LOCAL_MAGIC):
        return FileKind.TORCH_ZIP
    if data.startswith(NUMPY_MAGIC):
        return FileKind.NUMPY
    if _looks_like_safetensors(data):
        return FileKind.SAFETENSORS
    if _starts_with_pickle_proto(data) or starts_as_pickle(data):
        return FileKind.PICKLE
    return FileKind.OTHER


def is_polyglot(data: bytes) -> bool:
    """Say whether ``data`` is a zip archive that does not start like one.

    ``zipfile`` finds an archive by its end-of-central-directory record, so bytes
    that start as a pickle (or anything else) and end as a zip parse both ways: a
    scanner that looks at the zip and a loader that reads the pickle would disagree
    about what the file is. Such files are refused rather than guessed at.
    """
    if data.startswith(ZIP_LOCAL_MAGIC):
        return False
    # is_zipfile looks for the end record in the last 64 KiB only, so this is cheap.
    return zipfile.is_zipfile(io.BytesIO(data))


def _starts_with_pickle_proto(data: bytes) -> bool:
    """Protocol 2+ pickles (all that ``torch.save`` writes by default) open with PROTO n."""
    return len(data) >= 2 and data[0] == _PICKLE_PROTO and data[1] in _PICKLE_PROTOCOLS


def _looks_like_safetensors(data: bytes) -> bool:
    """A u64 header length that fits in the file, and a header from ``{`` to ``}`` (spaces may pad it)."""
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    if not 2 <= header_len <= len(data) - 8 or data[8:9] != b"{":
        return False
    end = 8 + header_len
    tail = data[max(9, end - _MAX_HEADER_PADDING) : end].rstrip(b" ")
    return tail.endswith(b"}")
