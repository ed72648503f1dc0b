"""The parity check: does the exported ONNX graph compute the same logits as the PyTorch classifier?

Two image sets go through both: fresh uniform-random pixels (inputs no
training set ever looked like, which shake out shape- and range-dependent
trace errors) and real images (the caller's pixels, or the procedural probes
by default). PyTorch runs here; onnxruntime runs in a child process that
imports only numpy, onnxruntime and :mod:`cbpt_guard.export.serve`, so

- the numbers come from the very code a deployment serves with, in a process
  without torch in it;
- a native crash inside onnxruntime (it has segfaulted on some fp16 graphs
  while optimising them) becomes an :class:`ExportError`, not a dead gate;
- the provider recorded is the one that session really ran on.

The reference is always the float32 PyTorch classifier, also for fp16 exports:
the question is how far the deployable artefact is from the model that was
verified, not from a half-precision copy of it.

This module imports torch lazily so that the child (``python -m
cbpt_guard.export.parity``) stays torch-free.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cbpt_guard.errors import ExportError, OnnxRuntimeMissingError, UsageError

if TYPE_CHECKING:
    import torch

    from cbpt_guard.classifier import ZeroShotClassifier

RANDOM_IMAGES = 16
"""Fresh uniform-random images per check."""
PROBE_IMAGES = 32
"""Procedural probes used as the real images when the caller gives none."""
BATCH = 32
RUNTIME_MISSING_EXIT = 3
"""The child's exit status when ``import onnxruntime`` fails: the runtime is missing, the export is not faulty."""
RUNTIME_MISSING = ("onnxruntime is not installed (or cannot be imported), so the export's parity cannot be checked; "
                   "install it (`pip install onnxruntime`, or cbpt-guard[gpu] for onnxruntime-gpu)")
"""Batch size on both sides (see :func:`batch_bounds`)."""
FP32_TOLERANCE = 1e-4
"""Largest absolute logit difference for a float32 export (the strict policy's default).

Measured on this CPU: 1e-7 to 2e-5 on the tiny test towers and the example
ViT, 1.2e-5 on a full-size ViT-B-32 at logit scale 100.
"""
FP16_TOLERANCE_PER_SCALE = 5e-3
"""An fp16 export's default tolerance, per unit of logit scale.

Logits are ``scale * cosine``, and fp16 rounding perturbs the cosine itself, so
the tolerance grows with the scale. Measured on CPU onnxruntime: 6.9e-4 per
unit on the example ViT (0.025 logits at scale 36.7), 1.6e-4 to 5e-4 on the
tiny towers; CPU onnxruntime computes some fp16 nodes in fp32 and GPUs do not,
hence the ~7x headroom.
"""
WORKER_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ParityReport:
    """How closely onnxruntime reproduced the PyTorch logits, and whether that is close enough.

    ``max_rel_diff`` is per image relative to that image's largest logit
    magnitude (a per-logit ratio explodes wherever a logit crosses zero).
    ``passed`` gates on ``max_abs_diff <= tolerance``; top-1 agreement is
    reported beside it and can only fall below 1 at near-ties (two logits within
    2 x tolerance), because no logit moved by more than the tolerance.
    """

    provider: str
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    tolerance: float
    passed: bool
    random_images: int
    real_images: int

    @property
    def images_compared(self) -> int:
        """How many images went through both runtimes."""
        return self.random_images + self.real_images

    def summary(self) -> str:
        """One line for messages and logs."""
        return (f"max |diff| {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}), max rel "
                f"{self.max_rel_diff:.3g}, top-1 agreement {100 * self.top1_agreement:.1f}% on "
                f"{self.images_compared} images ({self.random_images} random, {self.real_images} real) "
                f"via {self.provider}")


def default_tolerance(fp16: bool, logit_scale: float) -> float:
    """The parity tolerance in logit units when the caller sets none; see the two constants above."""
    return FP16_TOLERANCE_PER_SCALE * max(float(logit_scale), 1.0) if fp16 else FP32_TOLERANCE


def parity_images(image_size: int, *, seed: int = 0, real: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(random, real) pixel batches in [0, 1] for the check, each (n, 3, S, S) float32 on the CPU.

    ``real`` defaults to the procedural probes; given pixels are validated
    (shape, side, range) so that a bad batch is a usage error, not a parity failure.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    random = torch.rand(RANDOM_IMAGES, 3, image_size, image_size, generator=generator, device="cpu")  # (R, 3, S, S)
    if real is None:
        from cbpt_guard.probes import procedural_probes

        return random, procedural_probes(PROBE_IMAGES, image_size, seed=seed).images.float()
    if not isinstance(real, torch.Tensor) or real.ndim != 4 or real.shape[1] != 3 or len(real) == 0:
        raise UsageError(f"parity images must be a non-empty (N, 3, S, S) tensor, got "
                         f"{tuple(getattr(real, 'shape', ()))}")
    if tuple(real.shape[2:]) != (image_size, image_size):
        raise UsageError(f"parity images must be {image_size}x{image_size}, got {real.shape[2]}x{real.shape[3]}")
    real = real.detach().float().cpu()
    if not torch.isfinite(real).all() or real.min() < 0 or real.max() > 1:
        raise UsageError("parity images must be pixels in [0, 1]")
    return random, real


def compare_logits(onnx: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(max absolute diff, max per-image relative diff, top-1 agreement) of two (N, C) logit arrays.

    Non-finite ONNX output counts as an infinite difference, so it can never pass.
    """
    onnx, reference = np.asarray(onnx, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if onnx.shape != reference.shape:
        raise ExportError(f"the ONNX graph returned logits of shape {onnx.shape}, PyTorch {reference.shape}")
    if not np.isfinite(onnx).all():
        return math.inf, math.inf, float(np.mean(np.argmax(np.nan_to_num(onnx), 1) == np.argmax(reference, 1)))
    diff = np.abs(onnx - reference)  # (N, C)
    scale = np.maximum(np.abs(reference).max(axis=1), np.finfo(np.float32).tiny)  # (N,)
    relative = diff.max(axis=1) / scale  # (N,)
    top1 = np.argmax(onnx, axis=1) == np.argmax(reference, axis=1)  # (N,)
    return float(diff.max()), float(relative.max()), float(top1.mean())


def check_parity(classifier: ZeroShotClassifier, onnx_path: str | Path, *, random: torch.Tensor,
                 real: torch.Tensor, tolerance: float, threads: int | None = None) -> ParityReport:
    """Run ``random`` and ``real`` through PyTorch here and through onnxruntime in a child; compare the logits."""
    from cbpt_guard.chunking import Chunker, images_at_once

    chunker = Chunker(images_at_once(classifier, BATCH, grad=False), "the export's parity check")
    reference = chunker.run(lambda batch: {"random": torch_logits(classifier, random, batch),
                                           "real": torch_logits(classifier, real, batch)})
    outputs, providers = run_onnxruntime(onnx_path, {"random": random.numpy(), "real": real.numpy()}, threads,
                                         batch=chunker.size)  # both runtimes batch alike
    onnx = np.concatenate([outputs["random"], outputs["real"]])
    max_abs, max_rel, top1 = compare_logits(onnx, np.concatenate([reference["random"], reference["real"]]))
    return ParityReport(provider=providers[0] if providers else "unknown", max_abs_diff=max_abs,
                        max_rel_diff=max_rel, top1_agreement=top1, tolerance=float(tolerance),
                        passed=max_abs <= tolerance, random_images=len(random), real_images=len(real))


def torch_logits(classifier: ZeroShotClassifier, pixels: torch.Tensor, batch: int = BATCH) -> np.ndarray:
    """(N, C) float32 logits of the PyTorch classifier in batches of ``batch`` (:func:`batch_bounds`), exact float32.

    On CUDA without autocast or TF32 (:func:`cbpt_guard.device.exact`).
    """
    import torch

    from cbpt_guard.device import exact

    device = classifier.device
    bounds = batch_bounds(len(pixels), batch)
    with torch.no_grad(), exact():
        chunks = [classifier(pixels[a:b].to(device)).float().cpu() for a, b in zip(bounds, bounds[1:])]  # (b, C)
    return torch.cat(chunks).numpy()


def batch_bounds(count: int, batch: int = BATCH) -> list[int]:
    """Where the batches of a check start and end: the first image alone, then up to ``batch`` at a time.

    Both runtimes use the same batches, so behaviour that depends on the batch
    size (and that a trace froze at its example's size) shows as a difference.
    ``batch`` is ``BATCH`` unless that many images do not fit the free memory
    (:mod:`cbpt_guard.chunking`); the child is told the same figure.
    """
    return [0, *range(1, count, max(1, batch)), count] if count > 1 else [0, count]


def run_onnxruntime(onnx_path: str | Path, arrays: dict[str, np.ndarray], threads: int | None = None,
                    timeout: float = WORKER_TIMEOUT_S, batch: int = BATCH) -> tuple[dict[str, np.ndarray], list[str]]:
    """Logits of every named pixel batch through the serving module in a torch-free child process.

    Returns the logits by name and the session's providers. A crash, a
    non-zero exit or a timeout of the child raises :class:`ExportError`.
    """
    with tempfile.TemporaryDirectory(prefix="cbpt-parity-") as scratch:
        inputs, outputs = Path(scratch) / "inputs.npz", Path(scratch) / "outputs.npz"
        np.savez(inputs, **{name: np.ascontiguousarray(value, dtype=np.float32) for name, value in arrays.items()})
        command = [sys.executable, "-m", "cbpt_guard.export.parity", str(onnx_path), str(inputs), str(outputs),
                   str(threads or 0), str(batch)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_env(),
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ExportError(f"onnxruntime did not finish the parity run within {timeout:.0f} s") from None
        if done.returncode == RUNTIME_MISSING_EXIT:
            raise OnnxRuntimeMissingError(RUNTIME_MISSING)
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            raise ExportError(f"onnxruntime crashed ({name}) while loading or running the exported graph")
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise ExportError(f"onnxruntime could not run the exported graph: {lines[-1] if lines else 'no message'}")
        with np.load(outputs, allow_pickle=False) as data:
            logits = {name: data[name] for name in arrays}
            providers = [str(p) for p in data["providers"]]
    return logits, providers


def runtime_available() -> bool:
    """Whether onnxruntime can be found here (the parity child still reports a runtime that fails to import)."""
    import importlib.util

    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package's folder on PYTHONPATH so the child imports the same code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _worker(argv: list[str]) -> int:
    """The child: run every batch in the inputs file through :class:`OnnxClassifier`, write the logits."""
    from cbpt_guard.export.serve import OnnxClassifier

    model, inputs, outputs, threads, batch = argv
    try:
        import onnxruntime  # noqa: F401 - a missing runtime is its own outcome, not a faulty export
    except ImportError as error:
        print(f"{RUNTIME_MISSING}: {error}", file=sys.stderr)
        return RUNTIME_MISSING_EXIT
    classifier = OnnxClassifier(model, threads=int(threads) or None)
    results: dict[str, np.ndarray] = {}
    with np.load(inputs, allow_pickle=False) as data:
        for name in data.files:
            pixels = data[name]  # (N, 3, S, S)
            bounds = batch_bounds(len(pixels), int(batch))
            chunks = [classifier.logits(pixels[a:b]) for a, b in zip(bounds, bounds[1:])]  # each (b, C)
            results[name] = np.concatenate(chunks)
    np.savez(outputs, providers=np.array(classifier.providers_used), **results)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
