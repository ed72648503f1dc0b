"""Export the deployable classifier to ONNX, stamp its provenance, and prove it matches PyTorch.

After purification the text side is a constant (the class embeddings), so
what a deployment runs is the image side alone: pixels in [0, 1] -> mean/std
normalisation -> image tower -> unit features -> product with the class
embeddings -> logit scale -> logits, exactly :class:`ZeroShotClassifier`'s
forward. That is traced into one ONNX graph with a dynamic batch axis.

Choices, measured on torch 2.14 / onnxruntime 1.32:

- The TorchScript exporter (``dynamo=False``): the dynamo exporter needs
  ``onnxscript``, which this environment does not ship; the TorchScript one
  exports all three tower families in 0.1-0.2 s (6 s for a full ViT-B-32)
  and its bytes are identical from run to run.
- ``nn.MultiheadAttention`` (open_clip's ViT blocks and the ModifiedResNet
  attention pool) takes a fused "fast path", ``aten::_native_multi_head_attention``,
  when no gradient is needed; that operator has no ONNX conversion, so the
  fast path is switched off while tracing. The maths is the same.
- Opset 17: the first with a native LayerNormalization, read by every
  onnxruntime since 1.13 and by TensorRT.
- fp16 converts the traced float32 graph with onnxruntime's own converter,
  keeping float32 inputs and outputs. Casting the torch model to half before
  tracing was tried first: onnxruntime 1.32's CPU layout optimiser
  (NchwcTransformer) segfaults on that graph.

The file is written beside ``out_path`` under a temporary name and renamed
into place only once the parity check passes, so a failed export never leaves
a ``model.onnx`` behind for a deployment to pick up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cbpt_guard import __version__
from cbpt_guard.chunking import reports_out_of_memory
from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.device import exact
from cbpt_guard.errors import ExportError, OnnxRuntimeMissingError, UsageError
from cbpt_guard.export import parity, serve
from cbpt_guard.progress import Meter, Progress

OPSET = 17
TRACE_BATCH = 2  # not 1: a batch of one invites the tracer to bake size-1 broadcasts into the graph
HAND_WRITTEN = "hand-written"
"""The ``prompts_sha256`` provenance of an unpurified classifier (the manifest's templates)."""
REQUIRED_PROVENANCE = ("source_checkpoint_sha256", "prompts_sha256")
MAX_PROTO_BYTES = 2**31 - 2**26  # protobuf's 2 GiB limit, less room for the graph itself
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class ExportResult:
    """A written, parity-checked ONNX export (or, inside :class:`ParityError`, one that failed and was removed).

    ``path`` is None when nothing was kept; ``sha256`` is the digest of the
    bytes that were checked (and, when kept, written). Tolerance and
    differences are in logit units.
    """

    path: str | None
    sha256: str
    provider: str
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    passed: bool
    fp16: bool
    tolerance: float
    images_compared: int
    purified: bool
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    """The ``metadata_props`` written into the file."""

    def to_export_info(self, relative_to: str | Path | None = None, error: str | None = None):
        """This result as the Verdict's :class:`~cbpt_guard.verdict.ExportInfo` (path relative to the out folder)."""
        from cbpt_guard.verdict import ExportInfo

        path = self.path
        if path is not None and relative_to is not None:
            path = os.path.relpath(path, relative_to)
        return ExportInfo(path=path, sha256=self.sha256, purified=self.purified, fp16=self.fp16,
                          provider=self.provider, max_abs_diff=self.max_abs_diff, max_rel_diff=self.max_rel_diff,
                          top1_agreement=self.top1_agreement, tolerance=self.tolerance, passed=self.passed,
                          error=error)

    def to_dict(self) -> dict:
        """Plain JSON-ready form."""
        return dataclasses.asdict(self)


class ParityError(ExportError):
    """The export traced, but onnxruntime's logits were further from PyTorch's than the tolerance.

    ``result`` carries the measured numbers (``passed`` False, ``path`` None:
    the file was removed), so a report can show how far off it was.
    """

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


@reports_out_of_memory("the export")
def export_classifier(classifier: ZeroShotClassifier, out_path: str | Path, *, classes: tuple[str, ...],
                      provenance: dict[str, str], fp16: bool = False, tolerance: float | None = None,
                      parity_images: torch.Tensor | None = None, seed: int = 0,
                      progress: Progress | None = None) -> ExportResult:
    """Export ``classifier`` to ``out_path`` as ONNX, check it against PyTorch, and return the result.

    ``classes`` names the logits in order; ``provenance`` must hold
    ``source_checkpoint_sha256`` and ``prompts_sha256`` (``"hand-written"`` for an
    unpurified classifier) and may hold ``policy_sha256`` and other
    lower-case keys; all of it, the preprocessing constants and the tool
    version go into the file's ``metadata_props``. ``tolerance`` (logit units)
    defaults per precision (:func:`cbpt_guard.export.parity.default_tolerance`);
    ``parity_images`` are real pixels in [0, 1] at the model's side (default:
    procedural probes). The same inputs give the same bytes.

    Raises :class:`ExportError` when the tower cannot be traced (naming the
    operator when that is the cause) and :class:`ParityError` when the check
    fails; in both cases nothing is written to ``out_path`` (a file already
    there is left as it was; give each run its own folder). Without
    onnxruntime it raises :class:`OnnxRuntimeMissingError` before tracing:
    the parity could not be checked, which says nothing against the model.
    ``progress`` hears about the trace and the parity check as one stage.
    """
    classes = _check_classes(classes, classifier)
    provenance = _check_provenance(provenance)
    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise UsageError(f"the parity tolerance must be a positive number, got {tolerance}")
    if not parity.runtime_available():
        raise OnnxRuntimeMissingError(parity.RUNTIME_MISSING)
    meter = Meter(progress, "export: ONNX trace and parity check", 2)
    random, real = parity.parity_images(classifier.image_size, seed=seed, real=parity_images)
    proto = trace_to_onnx(classifier, random[:TRACE_BATCH])
    if fp16:
        proto = convert_to_fp16(proto)
    meter.advance(1)
    metadata = export_metadata(classifier, classes, provenance, fp16)
    data = _finish(proto, metadata)
    digest = hashlib.sha256(data).hexdigest()
    tolerance = parity.default_tolerance(fp16, float(classifier.scale)) if tolerance is None else float(tolerance)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _write_partial(out_path, data)
    try:
        report = parity.check_parity(classifier, partial, random=random, real=real, tolerance=tolerance,
                                     threads=torch.get_num_threads())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    meter.advance(2)
    purified = provenance["prompts_sha256"] != HAND_WRITTEN
    result = ExportResult(path=None, sha256=digest, provider=report.provider, max_abs_diff=report.max_abs_diff,
                          max_rel_diff=report.max_rel_diff, top1_agreement=report.top1_agreement,
                          passed=report.passed, fp16=fp16, tolerance=tolerance,
                          images_compared=report.images_compared, purified=purified, metadata=metadata)
    if not report.passed:
        partial.unlink(missing_ok=True)
        raise ParityError(f"the ONNX export of the {_tower_name(classifier)} classifier failed its parity check: "
                          f"{report.summary()}", result)
    os.replace(partial, out_path)
    return dataclasses.replace(result, path=str(out_path))


def trace_to_onnx(classifier: ZeroShotClassifier, example: torch.Tensor):
    """Trace ``classifier`` (pixels -> logits) into a float32 ``onnx.ModelProto`` with a dynamic batch axis.

    Raises :class:`ExportError` with a one-line message; when an operator has
    no ONNX conversion, the message and ``error.operator`` name it.
    """
    import io

    import onnx

    tower = _tower_name(classifier)
    weight_bytes = sum(p.numel() * p.element_size() for p in classifier.model.visual.parameters())
    if weight_bytes > MAX_PROTO_BYTES:
        raise ExportError(f"the {tower} image tower holds {weight_bytes / 2**30:.1f} GiB of weights; ONNX files "
                          f"over 2 GiB need external data, which this exporter does not write")
    device = classifier.device
    buffer = io.BytesIO()
    try:
        with _tracing_context(), exact():  # the graph is float32, whatever autocast the run's encoders used
            torch.onnx.export(classifier.eval(), (example.to(device),), buffer, dynamo=False,
                              input_names=[serve.INPUT_NAME], output_names=[serve.OUTPUT_NAME],
                              dynamic_axes={serve.INPUT_NAME: {0: "batch"}, serve.OUTPUT_NAME: {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True, export_params=True)
    except Exception as error:  # noqa: BLE001 - any tracing failure is this one typed, one-line error
        raise _export_error(tower, error) from error
    return onnx.load_from_string(buffer.getvalue())


def convert_to_fp16(proto):
    """The graph with float16 weights and arithmetic but float32 ``pixels`` in and ``logits`` out."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise OnnxRuntimeMissingError(parity.RUNTIME_MISSING) from None

    try:
        converted = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as error:  # noqa: BLE001 - a converter failure fails the export, typed
        raise ExportError(f"cannot convert the exported graph to fp16: {_first_line(error)}") from error
    _sort_nodes(converted.graph)  # the converter appends its input casts last; ONNX wants producers first
    return converted


def _sort_nodes(graph) -> None:
    """Reorder ``graph.node`` topologically in place: each node after its producers, otherwise as it was."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    state = [0] * len(nodes)  # 0 unseen, 1 on the current path, 2 emitted
    order: list[int] = []
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                state[index] = 2
                order.append(index)
                continue
            if state[index] == 2:
                continue
            if state[index] == 1:
                raise ExportError("the fp16 graph has a cycle")
            state[index] = 1
            stack.append((index, True))
            stack.extend((producer[name], False) for name in reversed(nodes[index].input)
                         if name in producer and state[producer[name]] != 2)
    copies = [type(nodes[index])() for index in order]
    for copy, index in zip(copies, order):
        copy.CopyFrom(nodes[index])
    del graph.node[:]
    graph.node.extend(copies)


def export_metadata(classifier: ZeroShotClassifier, classes: tuple[str, ...], provenance: dict[str, str],
                    fp16: bool) -> dict[str, str]:
    """The ``metadata_props`` of an export: what serving needs (classes, side, mean/std) and where it came from."""
    metadata = {
        serve.KEY_FORMAT: serve.METADATA_FORMAT,
        serve.KEY_CLASSES: json.dumps(list(classes), ensure_ascii=False),
        serve.KEY_IMAGE_SIZE: str(classifier.image_size),
        serve.KEY_MEAN: json.dumps([float(v) for v in classifier.mean.flatten().tolist()]),
        serve.KEY_STD: json.dumps([float(v) for v in classifier.std.flatten().tolist()]),
        serve.KEY_PRECISION: "fp16" if fp16 else "fp32",
        serve.KEY_LOGIT_SCALE: repr(float(classifier.scale)),
        serve.PREFIX + "tool_version": __version__,
    }
    metadata.update({serve.PREFIX + key: value for key, value in provenance.items()})
    return dict(sorted(metadata.items()))


def _finish(proto, metadata: dict[str, str]) -> bytes:
    """Stamp the metadata and a doc string, validate the graph, and serialise it."""
    import onnx

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"cbpt-guard {__version__} zero-shot classifier: {serve.INPUT_NAME} float32 (N, 3, S, S) "
                        f"RGB in [0, 1] -> {serve.OUTPUT_NAME} float32 (N, C); classes and preprocessing in "
                        f"metadata_props ({serve.PREFIX}*)")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported graph is not valid ONNX: {_first_line(error)}") from error
    return proto.SerializeToString()


def _write_partial(out_path: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh temporary file beside ``out_path``; the caller renames or removes it.

    Opened with ``open(..., "xb")`` rather than ``mkstemp`` so that the file
    gets the usual umask permissions (mkstemp's 0600 would survive the rename).
    """
    partial = out_path.with_name(f".{out_path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    with open(partial, "xb") as stream:
        stream.write(data)
    return partial


def _check_classes(classes, classifier: ZeroShotClassifier) -> tuple[str, ...]:
    classes = tuple(classes)
    if not classes or not all(isinstance(name, str) and name for name in classes):
        raise UsageError("classes must be a non-empty sequence of non-empty names")
    if len(classes) != len(classifier.text):
        raise UsageError(f"{len(classes)} class names for a classifier with {len(classifier.text)} classes")
    return classes


def _check_provenance(provenance: dict[str, str]) -> dict[str, str]:
    missing = [key for key in REQUIRED_PROVENANCE if not provenance.get(key)]
    if missing:
        raise UsageError(f"export provenance needs {', '.join(missing)} ('{HAND_WRITTEN}' for unpurified prompts)")
    reserved = {key.removeprefix(serve.PREFIX) for key in (serve.KEY_FORMAT, serve.KEY_CLASSES, serve.KEY_IMAGE_SIZE,
                                                           serve.KEY_MEAN, serve.KEY_STD, serve.KEY_PRECISION,
                                                           serve.KEY_LOGIT_SCALE)} | {"tool_version"}
    for key, value in provenance.items():
        if not isinstance(key, str) or not _KEY.match(key) or key in reserved:
            raise UsageError(f"provenance key {key!r} must be lower-case snake_case and not one the exporter sets")
        if not isinstance(value, str):
            raise UsageError(f"provenance value of {key!r} must be a string, got {type(value).__name__}")
    return dict(provenance)


def _tower_name(classifier: ZeroShotClassifier) -> str:
    return type(classifier.model.visual).__name__


@contextlib.contextmanager
def _tracing_context():
    """What a clean trace needs, undone afterwards: no MHA fast path, no tracer chatter, CPU as the default device.

    Process-wide state is touched (the MHA fast-path flag, file descriptor 1),
    so exports must not run concurrently with other torch work in threads.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    is_logging = getattr(torch._C, "_jit_is_onnx_log_enabled", None)  # private: may go in a later torch
    log_enabled = is_logging() if is_logging is not None else None
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # the exporter's own helper tensors are CPU data whatever default device the caller's process set
        with warnings.catch_warnings(), _native_stdout_muted(), torch.device("cpu"):
            # Shape asserts inside F.multi_head_attention_forward compare traced sizes; harmless,
            # and the parity check (which also runs other batch sizes) is the real guard.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if log_enabled is not None:  # the TorchScript exporter switches ONNX logging on and never back off
            torch._C._jit_set_onnx_log_enabled(log_enabled)


@contextlib.contextmanager
def _native_stdout_muted():
    """Send C++-level writes to stdout (the exporter dumps the whole graph there on failure) to a scratch file."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _flush_c_stdio() -> None:
    """fflush(NULL), so C-buffered output lands in the scratch file and not after stdout is restored."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


_OPERATOR_PATTERNS = (
    re.compile(r"operator '([^']+)'"),
    re.compile(r"unrecognized namespace (\S+?)\.?\s"),
    re.compile(r"export of operator (\S+?)[.,]?\s"),
)


def _export_error(tower: str, error: Exception) -> ExportError:
    """One line for any tracing failure; names the operator when the exporter said which one."""
    message = str(error)
    for pattern in _OPERATOR_PATTERNS:
        found = pattern.search(message)
        if found:
            operator = found.group(1)
            return ExportError(f"cannot export the {tower} image tower to ONNX: operator {operator} has no "
                               f"ONNX conversion (opset {OPSET})", operator=operator)
    return ExportError(f"cannot export the {tower} image tower to ONNX: {type(error).__name__}: "
                       f"{_first_line(error)}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
