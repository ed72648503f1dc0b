"""Serve an exported cbpt-guard classifier with onnxruntime and numpy alone.

This module imports neither torch nor open_clip (a test checks ``sys.modules``
in a fresh process), so a serving container needs only ``numpy`` and
``onnxruntime`` (or ``onnxruntime-gpu``) beside the ``.onnx`` file. Everything
the graph needs to be used correctly travels inside the file, in its
``metadata_props``: the class names, the input side, and the mean/std that the
graph already applies. Usage::

    from cbpt_guard.export.serve import OnnxClassifier

    classifier = OnnxClassifier("model.onnx")
    classifier.classify(image)             # [[("stop sign", 0.97)]]
    classifier.probabilities(batch)        # (N, C) float32

Images are numpy arrays, one image or a batch: ``uint8`` in 0..255 or floats in
[0, 1], channels first (N, 3, S, S) or last (N, S, S, 3), at the exported side S.
Resizing and cropping stay with the caller on purpose: open_clip's
preprocessing (resize the short side, centre-crop, bicubic) is the caller's
to reproduce, and a silent resize here would quietly cost accuracy. Mean/std
normalisation is inside the graph: pass raw pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cbpt_guard.errors import UsageError

INPUT_NAME = "pixels"
"""The graph's input: float32 (N, 3, S, S), RGB in [0, 1]."""
OUTPUT_NAME = "logits"
"""The graph's output: float32 (N, C), logit scale times cosine similarity."""
METADATA_FORMAT = "1"
"""Version of the metadata layout below; bumped when a key is renamed or removed."""
PREFIX = "cbpt_guard."
KEY_FORMAT = PREFIX + "format"
KEY_CLASSES = PREFIX + "classes"  # a JSON list of names, in logit order
KEY_IMAGE_SIZE = PREFIX + "image_size"  # the side S of the square input
KEY_MEAN = PREFIX + "mean"  # JSON list of 3 floats, applied inside the graph
KEY_STD = PREFIX + "std"  # JSON list of 3 floats, applied inside the graph
KEY_PRECISION = PREFIX + "precision"  # "fp32" or "fp16" (inputs and outputs are float32 either way)
KEY_LOGIT_SCALE = PREFIX + "logit_scale"
FLOAT_SLACK = 1e-6  # float pixels may overshoot [0, 1] by rounding, no more


def default_providers() -> list:
    """CUDA (exact fp32 matmuls: TF32 off) then CPU when onnxruntime-gpu is installed; CPU otherwise.

    TF32 is switched off because ONNX Runtime's CUDA provider enables it by
    default, which moves fp32 logits by ~1e-3: more than the export's parity
    check allows, so the numbers the check recorded would not hold in serving.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, providers: list | None = None, threads: int | None = None):
    """An onnxruntime InferenceSession on ``path``, quiet (errors only), with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a library never prints; failures still raise
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=providers or default_providers())


class OnnxClassifier:
    """A cbpt-guard ONNX export, ready to classify images; see the module docstring.

    ``providers`` and ``threads`` go to onnxruntime (default: CUDA if present,
    else CPU; onnxruntime's own thread count). ``providers_used`` is what the
    session really runs on.
    """

    def __init__(self, path: str | Path, *, providers: list | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{self.path}: no such ONNX file")
        self.session = open_session(self.path, providers, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get(KEY_FORMAT) != METADATA_FORMAT:
            raise UsageError(f"{self.path}: not a cbpt-guard export (no {KEY_FORMAT} = {METADATA_FORMAT} metadata)")
        self.classes: tuple[str, ...] = tuple(json.loads(self.metadata[KEY_CLASSES]))
        self.image_size = int(self.metadata[KEY_IMAGE_SIZE])
        self.mean = tuple(json.loads(self.metadata[KEY_MEAN]))
        self.std = tuple(json.loads(self.metadata[KEY_STD]))
        self.providers_used: list[str] = list(self.session.get_providers())

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """``images`` as the graph takes them: float32 (N, 3, S, S) in [0, 1]; refuses what does not fit."""
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or len(array) == 0:
            raise UsageError(f"expected one image or a non-empty batch, got shape {array.shape}")
        if array.shape[1] != 3 and array.shape[-1] == 3:
            array = array.transpose(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
        if array.shape[1] != 3:
            raise UsageError(f"expected 3 colour channels (first or last), got shape {array.shape}")
        side = self.image_size
        if array.shape[2:] != (side, side):
            raise UsageError(f"expected {side}x{side} images (resize and centre-crop first), "
                             f"got {array.shape[2]}x{array.shape[3]}")
        if array.dtype == np.uint8:
            return np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0)
        if not np.issubdtype(array.dtype, np.floating):
            raise UsageError(f"expected uint8 or float pixels, got {array.dtype}")
        if not np.isfinite(array).all() or array.min() < -FLOAT_SLACK or array.max() > 1 + FLOAT_SLACK:
            raise UsageError("float pixels must lie in [0, 1]; the graph normalises with the model's mean/std itself")
        return np.ascontiguousarray(array, dtype=np.float32)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, C) float32 logits of ``images`` (any form :meth:`pixels` accepts)."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: self.pixels(images)})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, C) float32 class probabilities: the softmax of the logits."""
        logits = self.logits(images).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)  # (N, C), stable exponent
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    def classify(self, images: np.ndarray, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """Per image, the ``top_k`` (class name, probability) pairs, most likely first."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        probabilities = self.probabilities(images)  # (N, C)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]  # (N, k)
        return [[(self.classes[c], float(row[c])) for c in ranks] for row, ranks in zip(probabilities, order)]
