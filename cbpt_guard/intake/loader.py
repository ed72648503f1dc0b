"""Resolve a checkpoint path, read every file once, refuse what is unsafe, and load the model.

Each file is read into memory exactly once; its SHA-256 and its kind are taken
from those bytes, and the same bytes are what gets parsed and loaded, so there
is no window in which a file could be swapped between the check and the load.
The digest of a large file is taken on a second thread while the checks, the
parse and the build go on (hashlib releases the interpreter lock); it is
waited for before anything reports it.
Every pickle, torch archive, numpy array and zip in a model directory is scanned,
not only the file that will be loaded: a consumer downstream may pick a different
file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cbpt_guard.errors import (
    CbptError,
    MalformedCheckpointError,
    NothingScannableError,
    UnsafeCheckpointError,
    UsageError,
)
from cbpt_guard.intake import architecture, hf_clip, model_config
from cbpt_guard.intake.archive_scan import PICKLE_SUFFIXES, scan_for_imports, scan_zip
from cbpt_guard.intake.compressed import decompress
from cbpt_guard.intake.filetype import FileKind, is_polyglot, sniff
from cbpt_guard.intake.filled_model import build_filled_model
from cbpt_guard.intake.manifest import (
    DEFAULT_TEMPLATES,
    MANIFEST_NAME,
    Manifest,
    decode_text,
    parse_classes_text,
    parse_manifest_text,
    read_text_file,
)
from cbpt_guard.intake.numpy_scan import scan_npy
from cbpt_guard.intake.pickle_scan import scan_pickle, starts_as_pickle
from cbpt_guard.intake.report import CheckpointReport, FileRecord, SkippedItem
from cbpt_guard.intake.safetensors_reader import read_safetensors
from cbpt_guard.intake.torch_reader import read_torch_state_dict
from cbpt_guard.intake.walk import model_files

OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"  # its image mean and std override the defaults
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MAX_CONFIG_BYTES = 1024 * 1024


BACKGROUND_HASH_BYTES = 64 * 1024 * 1024
"""Files at least this large are hashed on a second thread, beside the checks and the build."""


class _Digest:
    """The SHA-256 of bytes, computed on a second thread for large inputs and waited for when asked."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self._value: str | None = None
        self._thread: threading.Thread | None = None
        if len(data) >= BACKGROUND_HASH_BYTES:
            self._thread = threading.Thread(target=self._compute, name="sha256", daemon=True)
            self._thread.start()
        else:
            self._compute()

    def _compute(self) -> None:
        self._value = hashlib.sha256(self._data).hexdigest()
        self._data = None

    @property
    def hexdigest(self) -> str:
        """The digest, once computed."""
        if self._thread is not None:
            self._thread.join()
        if self._value is None:  # the thread failed (out of memory, say): hash here instead
            self._compute()
        return self._value


@dataclass(frozen=True)
class ReadFile:
    """A file's bytes as read once, with the digest and kind taken from those bytes."""

    path: Path
    data: bytes
    digest: _Digest = field(repr=False)
    kind: FileKind

    @property
    def sha256(self) -> str:
        """The SHA-256 of :attr:`data` (waits for a large file's hashing thread)."""
        return self.digest.hexdigest


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A safely loaded model, ready for detection, with the report that describes it."""

    report: CheckpointReport
    model: torch.nn.Module
    model_cfg: dict = field(repr=False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids for ``texts`` with the model's own context length. Returns (n, context_length)."""
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=self.report.context_length)(texts)


def read_file(path: Path) -> ReadFile:
    """Read ``path`` once and identify it by its bytes."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot be read ({error.strerror})") from None
    return ReadFile(path, data, _Digest(data), sniff(data))


def load_checkpoint(path: str | Path, *, arch: str | None = None, classes_file: str | Path | None = None
                    ) -> LoadedCheckpoint:
    """Load a checkpoint without executing anything in it, and describe it.

    ``path`` is an open_clip model directory, a transformers CLIP directory, or
    a single weights file (which then needs ``arch``, a built-in open_clip
    architecture name). Raises the typed errors of :mod:`cbpt_guard.errors`.
    """
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{target}: no such file or directory")
    if target.is_dir():
        plan = _plan_directory(target, arch)
    else:
        plan = _plan_single_file(target, arch)
    for read in plan.files:
        if read is not plan.weights:
            plan.notes[read.path] = _scan_unloaded(read)
    # Everything cheap comes first: the class list and the config are refused
    # before a byte of weights is parsed or a module is built.
    manifest = _resolve_manifest(plan, classes_file)
    model_config.check_model_config(plan.model_cfg, plan.config_source)
    model_config.check_preprocess_config(plan.preprocess_cfg, plan.config_source)
    state_dict, dtypes = _read_weights(plan.weights)
    origin = str(plan.weights.path)
    if plan.layout == "hf-clip-dir":
        state_dict = hf_clip.convert_hf_state_dict(state_dict, plan.model_cfg)
    state_dict = architecture.check_against_weights(plan.model_cfg, state_dict, origin)
    model = build_filled_model(plan.model_cfg, plan.preprocess_cfg, state_dict, origin)
    report = _describe(target, plan, model, dtypes, manifest, len(state_dict))
    return LoadedCheckpoint(report, model, plan.model_cfg)


@dataclass
class _Plan:
    """What intake decided to load, before loading it."""

    layout: str
    architecture: str
    model_cfg: dict
    preprocess_cfg: dict
    weights: ReadFile
    files: list[ReadFile]
    roles: dict[Path, str]
    manifest: ReadFile | None = None
    config_source: str = "model_cfg"
    skipped: list[SkippedItem] = field(default_factory=list)
    notes: dict[Path, str] = field(default_factory=dict)  # what the scan of each unloaded file found


def _plan_single_file(target: Path, arch: str | None) -> _Plan:
    read = read_file(target)
    if arch is None:
        _refuse_unsafe_loose_file(read)
        raise UsageError(f"{target}: a single weights file needs --arch NAME (an open_clip architecture)")
    model_cfg = architecture.config_for_name(arch)
    return _Plan("weights-file", arch, model_cfg, model_cfg.get("preprocess_cfg", {}), read, [read],
                 {read.path: "weights"}, config_source=f"architecture {arch}")


def _plan_directory(target: Path, arch: str | None) -> _Plan:
    files, skipped = _read_directory(target)
    by_name = {read.path.name: read for read in files}
    roles: dict[Path, str] = {}
    manifest = by_name.get(MANIFEST_NAME)
    if manifest is not None:
        roles[manifest.path] = "manifest"
    if OPEN_CLIP_CONFIG in by_name:
        if arch is not None:
            raise UsageError(f"{target}: --arch conflicts with the directory's {OPEN_CLIP_CONFIG}")
        config = _parse_json(by_name[OPEN_CLIP_CONFIG])
        if not isinstance(config.get("model_cfg"), dict):
            raise MalformedCheckpointError(f"{target / OPEN_CLIP_CONFIG}: has no 'model_cfg' object")
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg")
        layout, name, candidates, config_read = "open_clip-dir", "open_clip config", OPEN_CLIP_WEIGHTS, \
            by_name[OPEN_CLIP_CONFIG]
    elif HF_CONFIG in by_name and hf_clip.is_hf_clip_config(_parse_json(by_name[HF_CONFIG])):
        processor = by_name.get(HF_PREPROCESSOR)
        if processor is not None:
            roles[processor.path] = "config"
        model_cfg, preprocess_cfg = hf_clip.open_clip_config_from_hf(
            _parse_json(by_name[HF_CONFIG]), _parse_json(processor) if processor else None)
        layout, name, candidates, config_read = "hf-clip-dir", "transformers CLIPModel", HF_WEIGHTS, \
            by_name[HF_CONFIG]
    else:
        skipped += [SkippedItem(path=str(r.path), reason=f"{r.kind.value} file; no model config beside it")
                    for r in files]
        raise NothingScannableError(
            f"{target}: nothing scannable: no {OPEN_CLIP_CONFIG} or transformers CLIP {HF_CONFIG} "
            f"({_skipped_summary(skipped)})", tuple((s.path, s.reason) for s in skipped))
    roles[config_read.path] = "config"
    weights = next((by_name[c] for c in candidates if c in by_name), None)
    if weights is None:
        raise NothingScannableError(
            f"{target}: {config_read.path.name} found but no weights file ({' or '.join(candidates)})",
            tuple((s.path, s.reason) for s in skipped))
    roles[weights.path] = "weights"
    return _Plan(layout, name, model_cfg, preprocess_cfg, weights, files, roles, manifest,
                 str(config_read.path), skipped)


def _read_directory(target: Path) -> tuple[list[ReadFile], list[SkippedItem]]:
    listing = model_files(target)
    files, skipped = [read_file(path) for path in listing.files], list(listing.skipped)
    if not files:
        raise NothingScannableError(f"{target}: nothing scannable: no files ({_skipped_summary(skipped)})",
                                    tuple((s.path, s.reason) for s in skipped))
    return files, skipped


def _refuse_unsafe_loose_file(read: ReadFile) -> None:
    """Scan a weights file given without ``--arch`` before asking for it.

    A file that would run code when loaded is unsafe whatever else the run
    lacks: the gate says so (exit 1) rather than only "needs --arch" (exit 4),
    so a sweep or a pipeline that never names an architecture still records a
    malicious pickle as malicious. A file the scan cannot read leaves the usage
    error standing: it is the missing architecture the user can act on.
    """
    try:
        _scan_unloaded(read)
    except UnsafeCheckpointError:
        raise
    except CbptError:
        return


def _scan_unloaded(read: ReadFile) -> str:
    """Refuse a side file that would run code if some other consumer loaded it; else say what it is."""
    return _scan_side_bytes(read.data, str(read.path), read.kind, read.path.suffix.lower(), decompressed=False)


def _scan_side_bytes(data: bytes, origin: str, kind: FileKind, suffix: str, *, decompressed: bool) -> str:
    """Scan one side file's bytes by their kind (once more after decompression); return its report note."""
    if is_polyglot(data):
        finding = "polyglot: a zip archive hidden in a file that does not start as one"
        raise UnsafeCheckpointError(f"{origin}: refusing the directory: {finding}", findings=(finding,))
    if kind is FileKind.TORCH_ZIP:
        archive = scan_zip(data, origin)
        if archive.kind == "npz":
            return (f"numpy .npz of {len(archive.arrays)} arrays ({archive.object_arrays} object arrays, "
                    "their pickles scanned for unsafe imports); not loaded")
        return "scanned for unsafe imports; not loaded"
    if kind is FileKind.PICKLE:
        scan_pickle(data, origin)
        return "scanned for unsafe imports; not loaded"
    if kind is FileKind.NUMPY:
        if scan_npy(data, origin).pickle is None:
            return "numpy array of numbers (no object dtype, holds no code); not loaded"
        return "numpy object array: its pickle scanned for unsafe imports (np.load needs allow_pickle=True); not loaded"
    if kind is FileKind.SAFETENSORS:
        _refuse_hidden_pickle(data, origin)
        return "safetensors (holds no code); not loaded"
    inner = None if decompressed else decompress(data, origin)
    if inner is not None:
        name, content = inner
        note = _scan_side_bytes(content, f"{origin} ({name}-decompressed)", sniff(content), suffix, decompressed=True)
        return f"{name}-compressed; decompressed and {note or 'holds no pickle'}"
    if suffix in PICKLE_SUFFIXES or decompressed:
        # Bytes that do not parse to a STOP still run every opcode ahead of the error in an unpickler.
        scan_for_imports(data, origin)
    return ""


def _refuse_hidden_pickle(data: bytes, origin: str) -> None:
    """Refuse a safetensors file whose bytes also read as a pickle that imports something unsafe.

    The safetensors framing leaves the first eight bytes (the header length) free
    enough to open a pickle; loading it as safetensors is safe, but a consumer
    that unpickles the same file would run that pickle.
    """
    if starts_as_pickle(data):
        scan_for_imports(data, origin, container="pickle (its safetensors bytes also read as one)")


def _skipped_summary(skipped: list[SkippedItem]) -> str:
    if not skipped:
        return "the directory is empty"
    shown = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"skipped {shown}{more}"


def _parse_json(read: ReadFile) -> dict:
    if len(read.data) > MAX_CONFIG_BYTES:
        raise MalformedCheckpointError(f"{read.path}: {len(read.data)} bytes is too large for a model config")
    try:
        document = json.loads(read.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers json's own errors and Python's cap on digits in an integer
        raise MalformedCheckpointError(f"{read.path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise MalformedCheckpointError(f"{read.path}: must be a JSON object")
    return document


def _read_weights(read: ReadFile) -> tuple[dict, dict[str, int]]:
    origin = str(read.path)
    if read.kind == FileKind.SAFETENSORS:
        _refuse_hidden_pickle(read.data, origin)
        if is_polyglot(read.data):  # safetensors readers ignore what follows; zip readers find it
            finding = "polyglot: a zip archive hidden in a file that does not start as one"
            raise UnsafeCheckpointError(f"{origin}: refusing to load: {finding}", findings=(finding,))
        state_dict, header = read_safetensors(read.data, origin)
        dtypes = [entry.dtype for entry in header.tensors]
    elif read.kind in (FileKind.TORCH_ZIP, FileKind.PICKLE):
        state_dict = read_torch_state_dict(read.data, origin)
        dtypes = [str(tensor.dtype).removeprefix("torch.") for tensor in state_dict.values()]
    elif read.kind == FileKind.NUMPY:
        objects = scan_npy(read.data, origin).pickle is not None
        raise MalformedCheckpointError(
            f"{origin}: a numpy .npy array{' of objects' if objects else ''}, not a checkpoint: save the weights "
            "as safetensors or with torch.save(state_dict, PATH)")
    else:
        _scan_side_bytes(read.data, origin, read.kind, ".bin", decompressed=False)  # refuse what it would run
        raise MalformedCheckpointError(f"{origin}: not a safetensors, torch archive or pickle checkpoint")
    return state_dict, {dtype: dtypes.count(dtype) for dtype in sorted(set(dtypes))}


def _resolve_manifest(plan: _Plan, classes_file: str | Path | None) -> Manifest | None:
    manifest = None
    if plan.manifest is not None:
        text = decode_text(plan.manifest.data, str(plan.manifest.path))
        manifest = parse_manifest_text(text, str(plan.manifest.path))
    if classes_file is not None:
        path = Path(classes_file)
        classes = parse_classes_text(read_text_file(path), str(path))
        templates = manifest.templates if manifest else DEFAULT_TEMPLATES
        manifest = Manifest(classes, templates, manifest.description if manifest else "", str(path))
    return manifest


def _describe(target: Path, plan: _Plan, model: torch.nn.Module, dtypes: dict[str, int],
              manifest: Manifest | None, tensor_count: int) -> CheckpointReport:
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    text = getattr(model, "text", model)
    preprocess = dict(visual.preprocess_cfg)
    files = tuple(
        FileRecord(path=str(r.path), size=len(r.data), sha256=r.sha256, kind=r.kind.value,
                   role=plan.roles.get(r.path, "other"), note=_file_note(r, plan))
        for r in plan.files
    )
    return CheckpointReport(
        source=str(target), layout=plan.layout, architecture=plan.architecture,
        model_class=type(model).__name__, checkpoint_sha256=plan.weights.sha256,
        parameter_count=sum(p.numel() for p in model.parameters()), tensor_count=tensor_count, dtypes=dtypes,
        image_size=tuple(int(s) for s in size), context_length=int(text.context_length),
        embed_dim=int(plan.model_cfg["embed_dim"]), vision_tower=type(visual).__name__,
        preprocess={k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()},
        classes=manifest.classes if manifest else None,
        class_count=len(manifest.classes) if manifest else None,
        classes_source=manifest.source if manifest else None,
        templates=manifest.templates if manifest else DEFAULT_TEMPLATES,
        files=files, skipped=tuple(plan.skipped),
    )


def _file_note(read: ReadFile, plan: _Plan) -> str:
    if read is plan.weights:
        return "loaded"
    return plan.notes.get(read.path, "")
