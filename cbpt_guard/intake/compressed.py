"""Decompress a side file that is a gzip, bz2, xz, lzma or zlib stream, with a bound on its size.

``joblib.dump(..., compress=...)`` writes a pickle inside such a stream and
``joblib.load`` finds the compression by its magic bytes, so a compressed file
beside a model can run code as surely as a bare pickle. Intake decompresses it
(at most :data:`MAX_DECOMPRESSED_BYTES`, so a decompression bomb costs nothing)
and scans what comes out like any other file.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

from cbpt_guard.errors import MalformedCheckpointError

MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024
# magic bytes -> (format name, a new decompressor); zlib's second byte is its level.
_FORMATS = (
    (b"\x1f\x8b", "gzip", lambda: zlib.decompressobj(wbits=31)),
    (b"BZh", "bz2", bz2.BZ2Decompressor),
    (b"\xfd7zXZ\x00", "xz", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
    (b"]\x00\x00", "lzma", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)),
    *((bytes([0x78, level]), "zlib", zlib.decompressobj) for level in (0x01, 0x5E, 0x9C, 0xDA)),
)


def decompress(data: bytes, origin: str) -> tuple[str, bytes] | None:
    """``(format, decompressed bytes)`` when ``data`` is a complete compressed stream, else None.

    Bytes that start like a compressed stream but do not decompress are not one
    (nothing could load them as one either).

    Raises:
        MalformedCheckpointError: the stream decompresses to more than the bound.
    """
    for magic, name, make in _FORMATS:
        if not data.startswith(magic):
            continue
        try:
            out = _bounded(make(), data)
        except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError):
            return None
        if out is None:
            raise MalformedCheckpointError(
                f"{origin}: {name} stream decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes; refusing to "
                "scan it further")
        return name, out
    return None


def _bounded(decompressor, data: bytes) -> bytes | None:
    """Decompress ``data`` whole, or None when the output passes the bound."""
    out = decompressor.decompress(data, max_length=MAX_DECOMPRESSED_BYTES + 1)
    if len(out) > MAX_DECOMPRESSED_BYTES:
        return None
    if not decompressor.eof:
        raise ValueError("truncated stream")
    return out
