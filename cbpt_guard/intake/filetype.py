"""Identify a checkpoint file by its bytes, never by its name.

A file called ``model.safetensors`` may hold a pickle, and a ``.bin`` may be a zip:
what decides how a file is read (and which safety checks run) is what its first
bytes say. A file that two readers would parse differently, such as a pickle with
a zip archive appended, is a polyglot; :func:`is_polyglot` finds those so that the
reader can refuse them.
"""

from __future__ import annotations

import enum
import io
import pickletools
import struct
import zipfile
from collections.abc import Sequence

ZIP_LOCAL_MAGIC = b"PK\x03\x04"
"""The zip local-file header signature; ``torch.save`` archives start with it."""

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The integer that the first pickle of a legacy (pre-zip) ``torch.save`` file holds."""

_PICKLE_PROTO = 0x80
_PICKLE_PROTOCOLS = range(2, 6)
# The magic-number pickle is at most PROTO, one integer opcode, STOP (15 bytes at
# protocol 2, 25 as protocol-0 text); a bound keeps sniffing cheap on any input.
_MAGIC_PICKLE_MAX_BYTES = 64
_INTEGER_OPS = frozenset({"INT", "LONG", "LONG1", "LONG4"})


class FileKind(str, enum.Enum):
    """What a file's bytes are, as far as a checkpoint reader is concerned."""

    SAFETENSORS = "safetensors"
    """A little-endian u64 header length, then a JSON header: no code can run."""
    TORCH_ZIP = "torch_zip"
    """A zip archive (``torch.save`` since 1.6): pickles inside, to be scanned."""
    PICKLE = "pickle"
    """A bare pickle stream, or a legacy ``torch.save`` file (several pickles, then raw data)."""
    OTHER = "other"
    """Anything else: not a checkpoint this tool reads."""


def sniff(data: bytes) -> FileKind:
    """Classify ``data`` by its leading bytes.

    Zip and pickle are checked before safetensors on purpose: a file that could be
    read either way is then sent down the path that scans for code.
    """
    if data.startswith(ZIP_LOCAL_MAGIC):
        return FileKind.TORCH_ZIP
    if _starts_with_pickle_proto(data) or _starts_with_torch_magic(data):
        return FileKind.PICKLE
    if _looks_like_safetensors(data):
        return FileKind.SAFETENSORS
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


def _starts_with_torch_magic(data: bytes) -> bool:
    """Catch legacy torch files written with pickle protocol 0 or 1 (no PROTO opcode)."""
    head = io.BytesIO(data[:_MAGIC_PICKLE_MAX_BYTES])
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(head)]
    except ValueError:
        return False
    return _ops_hold_torch_magic(ops)


def _ops_hold_torch_magic(ops: Sequence[tuple[str, object]]) -> bool:
    """Say whether one pickle's opcodes are exactly "push the torch magic number, stop".

    Shared with the pickle scanner, which uses it to tell a legacy torch file (read
    as a sequence of pickles) from a single bare pickle.
    """
    # PROTO and FRAME (protocol 4+) only frame the stream; they carry no value.
    body = [(name, arg) for name, arg in ops if name not in ("PROTO", "FRAME")]
    return (
        len(body) == 2
        and body[0][0] in _INTEGER_OPS
        and body[0][1] == TORCH_LEGACY_MAGIC
        and body[1][0] == "STOP"
    )


def _looks_like_safetensors(data: bytes) -> bool:
    """A u64 header length that fits in the file, then the JSON header's opening brace."""
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    return 2 <= header_len <= len(data) - 8 and data[8:9] == b"{"
