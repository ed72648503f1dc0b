"""The one device a run uses, and the arithmetic its encoders do there.

A run picks its device once (``auto``, ``cpu`` or ``cuda``: the CLI's
``--device``, else the policy's ``run.device``), :func:`resolve` checks it
against the machine, and the model is moved there before any stage starts.
From then on every stage follows the model: a stage reads the device from the
classifier it was handed (:func:`device_of`) and makes its tensors there, so
there is no second place a device can be chosen, and none can be forgotten.
Random draws (probes, trigger initialisations, batch orders) are made on the
CPU's generator and then moved, so a seed gives the same numbers on every device.

Precision (docs/device.md says what is and is not bit-stable):

- CPU: float32 throughout, exactly as before this module existed; nothing here
  changes a CPU run (:func:`autocast` is a no-op there).
- CUDA: the image and text encoders run under autocast, bfloat16 where the GPU
  has it natively (compute capability 8 and up), float16 otherwise, and float32
  matmuls may use TF32. What the decision reads (features normalised, logits,
  the loss, trigger parameters, sizes and the optimiser state) stays float32:
  encoder outputs are cast back before anything else touches them.
- :func:`exact` turns both off for a block: the ONNX export and its parity
  check run in it, because parity compares float32 against float32.

No torch at import: the CLI validates ``--device`` without loading it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cbpt_guard.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""What a run may ask for: ``auto`` takes CUDA when a GPU is visible, else the CPU."""

_EXACT = contextvars.ContextVar("cbpt_guard_exact_float32", default=False)


@dataclass(frozen=True)
class RunDevice:
    """The device a run really uses, as :func:`resolve` found it."""

    choice: str
    """What was asked for: auto, cpu or cuda."""
    name: str
    """``cpu`` or ``cuda:N``: what torch calls it, and what the Verdict records."""
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    precision: str = "float32"
    """The encoders' arithmetic: ``float32``, or ``bfloat16 autocast, TF32 matmuls`` (``float16 ...``)."""

    @property
    def is_cuda(self) -> bool:
        """Whether the run uses a GPU."""
        return self.name.startswith("cuda")

    def torch(self) -> torch.device:
        """The ``torch.device`` of the run."""
        import torch

        return torch.device(self.name)


CPU = RunDevice(choice="cpu", name="cpu")


def check_choice(choice: str | None) -> str:
    """``choice`` if it is one of :data:`DEVICE_CHOICES` (None is ``auto``); else a :class:`UsageError`."""
    choice = "auto" if choice is None else str(choice).strip().lower()
    if choice not in DEVICE_CHOICES:
        raise UsageError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {choice!r}")
    return choice


def resolve(choice: str | None) -> RunDevice:
    """The device a run asked for (``auto``, ``cpu``, ``cuda``; None is ``auto``) on this machine.

    ``cuda`` without a usable GPU is a usage error (exit 4) found before any
    model is loaded, so a GPU runner that lost its GPU does not quietly run for
    an hour on its CPU. ``auto`` never fails: no GPU means the CPU.
    """
    choice = check_choice(choice)
    if choice == "cpu":
        return CPU
    import torch

    if not torch.cuda.is_available():
        if choice == "cuda":
            raise UsageError("device cuda was asked for, but no CUDA device is available")
        return RunDevice(choice=choice, name="cpu")
    index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    half = "bfloat16" if _native_bf16(index) else "float16"
    return RunDevice(choice=choice, name=f"cuda:{index}", gpu_name=str(properties.name),
                     gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                     precision=f"{half} autocast, TF32 matmuls")


def _native_bf16(index: int) -> bool:
    """bfloat16 in hardware (Ampere, compute capability 8.0, and later); older GPUs would only emulate it."""
    import torch

    return torch.cuda.get_device_capability(index)[0] >= 8


def device_of(module: torch.nn.Module) -> torch.device:
    """The device a module's first parameter or buffer lives on (the CPU for a module with neither)."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype encoders run at on ``device``: None (float32) on the CPU or inside :func:`exact`."""
    import torch

    if device.type != "cuda" or _EXACT.get():
        return None
    return torch.bfloat16 if _native_bf16(device.index or 0) else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision for an encoder's forward (and so its backward) on ``device``; nothing on the CPU.

    Also lets float32 matmuls use TF32 inside the block, and restores the
    previous settings after it.
    """
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device_type="cuda", dtype=dtype):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """float32 without TF32 for the block, whatever the device: the ONNX export and its parity check run here."""
    import torch

    token = _EXACT.set(True)
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        _EXACT.reset(token)
