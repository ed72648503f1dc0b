"""A strict reader of the safetensors format, over bytes already in memory.

The header is validated by hand before the ``safetensors`` library sees the
bytes, so that an absurd length field, overlapping tensors or offsets past the
end become one clear :class:`MalformedCheckpointError` instead of a crash or a
huge allocation. Layout: 8 bytes little-endian header length N, N bytes of
JSON, then the raw tensor data that the JSON's ``data_offsets`` index.

Once the header is validated the tensors are read-only views of the very bytes
that were read and hashed, not copies: the loader copies them once, into the
model's own parameters, so a 600 MB checkpoint costs one read, one hash and one
copy.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import warnings
from dataclasses import dataclass

from cbpt_guard.errors import MalformedCheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own cap

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


TORCH_DTYPES = {  # attribute names in torch; uint16-64 and float8 need torch 2.1+
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
    "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64",
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header: its tensors in file order and its string metadata."""

    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    data_start: int


def parse_header(data: bytes, origin: str) -> SafetensorsHeader:
    """Validate a safetensors header against the bytes that follow it.

    Raises :class:`MalformedCheckpointError` (naming ``origin``) for every
    inconsistency; never any other exception.
    """
    if len(data) < 8:
        raise MalformedCheckpointError(f"{origin}: truncated safetensors file ({len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or length > len(data) - 8:
        raise MalformedCheckpointError(
            f"{origin}: safetensors header length {length} is impossible for a {len(data)}-byte file"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers json's errors and Python's cap on the digits of an integer
        raise MalformedCheckpointError(f"{origin}: safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise MalformedCheckpointError(f"{origin}: safetensors header is not a JSON object")
    data_start = 8 + length
    metadata = _parse_metadata(header.pop("__metadata__", {}), origin)
    entries = [_parse_entry(name, spec, origin) for name, spec in header.items()]
    _check_layout(entries, len(data) - data_start, origin)
    return SafetensorsHeader(tuple(entries), metadata, data_start)


def _parse_metadata(metadata: object, origin: str) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MalformedCheckpointError(f"{origin}: safetensors __metadata__ must map strings to strings")
    return dict(metadata)


def _parse_entry(name: str, spec: object, origin: str) -> TensorEntry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise MalformedCheckpointError(f"{origin}: tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list or object is unhashable
        raise MalformedCheckpointError(f"{origin}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise MalformedCheckpointError(f"{origin}: tensor {name!r} has an invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise MalformedCheckpointError(f"{origin}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise MalformedCheckpointError(
            f"{origin}: tensor {name!r} spans {end - begin} bytes but its shape {shape} and dtype {dtype} need "
            f"{math.prod(shape) * DTYPE_SIZES[dtype]}"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(entries: list[TensorEntry], data_len: int, origin: str) -> None:
    """Tensors must tile the data section exactly: no gaps, overlaps or bytes past the end."""
    cursor = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != cursor:
            raise MalformedCheckpointError(
                f"{origin}: tensor {entry.name!r} starts at byte {entry.begin}, expected {cursor} (gap or overlap)"
            )
        cursor = entry.end
    if cursor != data_len:
        raise MalformedCheckpointError(
            f"{origin}: safetensors data section is {data_len} bytes but the tensors cover {cursor} (truncated?)"
        )


def read_safetensors(data: bytes, origin: str) -> tuple[dict, SafetensorsHeader]:
    """Validate ``data`` and take its tensors from these same bytes.

    Returns ``(state_dict, header)``. The tensors are views of ``data``, which
    is immutable: copy them before writing to them (the loader copies them into
    the model). Safetensors holds no code, so nothing here can execute.
    """
    header = parse_header(data, origin)
    if sys.byteorder != "little":  # the format is little-endian; the reference library swaps bytes
        return _load_with_library(data, origin), header
    return tensors_from_bytes(data, header, origin), header


def tensors_from_bytes(data: bytes, header: SafetensorsHeader, origin: str) -> dict:
    """The header's tensors as read-only views of ``data`` (a copy only where an offset is not aligned to its dtype).

    ``header`` must come from :func:`parse_header` of the same bytes: its
    entries tile the data section exactly, so every slice is in bounds.
    """
    import torch

    with warnings.catch_warnings():  # torch warns that bytes are not writable: these views are only read
        warnings.simplefilter("ignore", UserWarning)
        # (len(data),) uint8 over the whole file, so a view's storage offset is its offset in the file;
        # torch.frombuffer refuses an empty buffer
        flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    start = header.data_start
    tensors = {}
    for entry in header.tensors:
        raw = flat[start + entry.begin:start + entry.end]  # (end - begin,) uint8, a view
        dtype = getattr(torch, TORCH_DTYPES[entry.dtype], None)
        if dtype is None:
            raise MalformedCheckpointError(f"{origin}: tensor {entry.name!r} has dtype {entry.dtype}, which this "
                                           f"torch {torch.__version__} cannot hold")
        if dtype is torch.bool:
            tensors[entry.name] = (raw != 0).reshape(entry.shape)  # any byte but 0 is True, as a clean bool
            continue
        if (start + entry.begin) % DTYPE_SIZES[entry.dtype]:
            raw = raw.clone()  # a misaligned view cannot be reinterpreted in place
        tensors[entry.name] = raw.view(dtype).reshape(entry.shape)
    return tensors


def _load_with_library(data: bytes, origin: str) -> dict:
    from safetensors.torch import load as load_bytes

    try:
        return load_bytes(data)
    except Exception as error:  # noqa: BLE001 - the library's errors are untyped; name the file
        raise MalformedCheckpointError(f"{origin}: safetensors could not load the file ({error})") from None
