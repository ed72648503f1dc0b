"""Read a ``torch.save`` checkpoint's state dict without running code from it.

Two independent layers, in order: the static scan of every pickle the file holds
(:mod:`cbpt_guard.intake.pickle_scan`), then ``torch.load(weights_only=True)``,
whose own unpickler refuses unknown imports a second time. Both read the same
bytes, the ones the caller hashed; the file is never opened again, so it cannot
change between the check and the load. A pickle in opcodes torch's unpickler
lacks (protocols 1, 4 and 5) is rewritten into protocol 2 first
(:mod:`cbpt_guard.intake.pickle_transcode`), and the rewritten bytes are scanned
again: what torch loads is always what was scanned.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from cbpt_guard.errors import MalformedCheckpointError, UnsafeCheckpointError
from cbpt_guard.intake.archive_scan import scan_zip
from cbpt_guard.intake.filetype import FileKind, is_polyglot, sniff
from cbpt_guard.intake.pickle_scan import PickleScan, scan_pickle, scan_torch_zip
from cbpt_guard.intake.pickle_transcode import TranscodeError, transcode_legacy, transcode_zip

if TYPE_CHECKING:
    import torch

# Patterns of torch's weights-only refusals that name the import they refused.
_TORCH_REFUSAL_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_MAX_DETAIL_CHARS = 200
_WRAPPER_KEY = "state_dict"
_DATA_PARALLEL_PREFIX = "module."
_NUMPY_DTYPE_CLASSES = (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
    "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType",
    "Float64DType", "Complex64DType", "Complex128DType",
)  # fmt: skip


def read_torch_state_dict(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    """Load the tensors of a ``torch.save`` file (zip or legacy) from its bytes.

    ``origin`` names the file in messages. A top-level ``{"state_dict": ...}``
    wrapper and a ``module.`` prefix on every key (DataParallel) are removed;
    Parameters come back as plain tensors on the CPU.

    Raises:
        UnsafeCheckpointError: a polyglot file, an import outside the allowlist
            (from the scan or from torch's weights-only unpickler).
        MalformedCheckpointError: not a torch checkpoint, unreadable, or not a
            mapping of names to tensors.
    """
    kind = sniff(data)
    if is_polyglot(data):
        _refuse_polyglot(data, origin, kind)
    if kind is FileKind.TORCH_ZIP:
        archive = scan_zip(data, origin)
        if archive.torch is None:
            raise MalformedCheckpointError(
                f"{origin}: a numpy .npz archive, not a torch checkpoint (zip archive has no data.pkl): save the "
                "weights as safetensors or with torch.save(state_dict, PATH)")
        scan = archive.torch
    elif kind is FileKind.PICKLE:
        scan = scan_pickle(data, origin)
    else:
        raise MalformedCheckpointError(f"{origin}: not a torch checkpoint (its bytes read as {kind.value})")
    data, scan = _in_torch_opcodes(data, origin, kind, scan)
    loaded = _weights_only_load(data, origin, scan)
    return _as_state_dict(loaded, origin)


def _in_torch_opcodes(data: bytes, origin: str, kind: FileKind, scan: PickleScan) -> tuple[bytes, PickleScan]:
    """The checkpoint with its pickles in the opcodes torch's weights-only loader reads, scanned again.

    Files torch can read as they are (protocols 2 and 3) are returned unchanged.
    """
    try:
        if kind is FileKind.TORCH_ZIP:
            rewritten = transcode_zip(data)
        else:
            rewritten = transcode_legacy(data, scan.pickles)
    except TranscodeError as exc:
        raise MalformedCheckpointError(
            f"{origin}: cannot be loaded weights-only: {exc}; re-save the state dict with torch.save(state_dict, "
            "PATH) or as safetensors"
        ) from None
    except ValueError as exc:
        raise MalformedCheckpointError(f"{origin}: not a readable pickle: {exc}") from None
    if rewritten is None:
        return data, scan
    rescan = scan_torch_zip(rewritten, origin) if kind is FileKind.TORCH_ZIP else scan_pickle(rewritten, origin)
    return rewritten, rescan


def _refuse_polyglot(data: bytes, origin: str, kind: FileKind) -> NoReturn:
    """Refuse a file that is a zip and something else at once, naming what it hides.

    When the leading part is a pickle, its refused imports are added to the
    findings, so the report says what the file would have run.
    """
    polyglot = "polyglot: a zip archive hidden in a file that does not start as one"
    hidden: tuple[str, ...] = ()
    if kind is FileKind.PICKLE:
        try:
            scan_pickle(data, origin)
        except UnsafeCheckpointError as exc:
            hidden = exc.findings
        except MalformedCheckpointError:
            pass  # the polyglot alone is reason enough to refuse
    also = f"; its pickle imports {', '.join(hidden)}" if hidden else ""
    raise UnsafeCheckpointError(f"{origin}: refusing to load: {polyglot}{also}", findings=(polyglot, *hidden))


def _weights_only_load(data: bytes, origin: str, scan: PickleScan) -> Any:
    """``torch.load`` the scanned bytes with torch's weights-only unpickler."""
    import torch

    extra_globals = _numpy_safe_globals(scan.globals_seen)
    try:
        with torch.serialization.safe_globals(extra_globals):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _globals_torch_refused(str(exc))
        if refused:
            raise UnsafeCheckpointError(
                f"{origin}: refusing to load: torch's weights-only loader refused {', '.join(refused)}",
                findings=refused,
            ) from None
        raise MalformedCheckpointError(f"{origin}: torch.load failed: {_one_line(exc)}") from None
    except Exception as exc:  # anything torch raises means "could not read it": fail closed
        raise MalformedCheckpointError(f"{origin}: torch.load failed: {_one_line(exc)}") from None


def _numpy_safe_globals(globals_seen: tuple[str, ...]) -> list[Any]:
    """The numpy objects torch must accept for the numpy imports the scan allowed.

    torch's weights-only unpickler refuses numpy by default; the scan has already
    limited numpy to array and scalar rebuilding, so those (and the dtype classes
    whose state BUILD sets) are allowed for this one load.
    """
    wanted = [name for name in globals_seen if name.startswith("numpy.")]
    if not wanted:
        return []
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    by_name: dict[str, Any] = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "numpy.core.multiarray._reconstruct": multiarray._reconstruct,
        "numpy._core.multiarray._reconstruct": multiarray._reconstruct,
        "numpy.core.multiarray.scalar": multiarray.scalar,
        "numpy._core.multiarray.scalar": multiarray.scalar,
        "numpy.core.numeric._frombuffer": numeric._frombuffer,
        "numpy._core.numeric._frombuffer": numeric._frombuffer,
    }
    allowed: list[Any] = [(by_name[name], name) for name in wanted if name in by_name]
    dtype_classes = getattr(np, "dtypes", None)  # numpy >= 1.25; before it BUILD sees np.dtype
    if dtype_classes is not None:
        allowed += [getattr(dtype_classes, cls) for cls in _NUMPY_DTYPE_CLASSES]
    return allowed


def _globals_torch_refused(message: str) -> tuple[str, ...]:
    """The imports named in a weights-only refusal, in order, each once."""
    found = [m.group(1) for pattern in _TORCH_REFUSAL_PATTERNS for m in pattern.finditer(message)]
    return tuple(dict.fromkeys(found))


def _one_line(exc: BaseException) -> str:
    """A short single-line account of an exception from torch.

    torch wraps weights-only failures in several lines of advice; the line after
    "WeightsUnpickler error:" (or else the first line) is the one that says what failed.
    """
    text = _ANSI_ESCAPE.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else ""
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _as_state_dict(loaded: Any, origin: str) -> dict[str, torch.Tensor]:
    """Unwrap and check the loaded object: a non-empty mapping of str to Tensor."""
    import torch

    if isinstance(loaded, Mapping) and isinstance(loaded.get(_WRAPPER_KEY), Mapping):
        loaded = loaded[_WRAPPER_KEY]
    if not isinstance(loaded, Mapping):
        raise MalformedCheckpointError(
            f"{origin}: holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)"
        )
    bad_keys = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad_keys:
        shown = ", ".join(repr(key)[:40] for key in bad_keys[:3])
        raise MalformedCheckpointError(
            f"{origin}: not a state dict: {len(bad_keys)} entries are not str -> Tensor (e.g. {shown})"
        )
    if not loaded:
        raise MalformedCheckpointError(f"{origin}: the state dict holds no tensors")
    strip = all(key.startswith(_DATA_PARALLEL_PREFIX) for key in loaded)
    return {
        (key[len(_DATA_PARALLEL_PREFIX) :] if strip else key): tensor.detach()
        for key, tensor in loaded.items()
    }
