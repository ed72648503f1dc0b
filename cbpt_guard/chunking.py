"""How many images a stage may push through the model at once, sized from the memory actually free.

Every stage that runs images through the image tower (inversion, evidence,
the per-class anomaly search, CBPT's feature caches, verification, the ONNX
parity check) splits its batch into chunks of at most :func:`chunk_size`
images, so no stage needs memory that grows with classes x probes. A chunk is
sized from

- the memory free on the device (CUDA: ``torch.cuda.mem_get_info`` plus what
  torch's allocator holds unused; CPU: ``MemAvailable`` in ``/proc/meminfo``),
  of which :data:`MEMORY_SHARE` is planned for, or from a fixed limit set for
  a run with :func:`memory_limit`, which makes the chunks independent of the
  machine's state;
- what one image costs the model, measured once per model (:func:`image_cost`).

A chunk never exceeds the batch the stage used before it was chunked, so when
everything fits (the examples on a CPU) every stage computes exactly what it
computed unchunked, bit for bit. Smaller chunks change only the floating-point
rounding: a stage that chunks an optimisation step accumulates the gradients
of its chunks into one step.

On CUDA an out-of-memory error can still happen (the estimate is an estimate;
other processes share the card): :class:`Chunker` retries the failed step once
with half the chunk, and a second failure raises
:class:`~cbpt_guard.errors.OutOfMemory` (exit 3, the stage reported skipped).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from cbpt_guard.errors import OutOfMemory

MEMORY_SHARE = 0.5
"""Share of the free memory a chunk plans for: the rest covers the estimate's error, the optimiser, other tenants."""
BACKWARD_FACTOR = 2.0
"""Per image, a backward pass holds the tensors saved for it plus gradients of about the same size at its peak."""
MEMINFO = Path("/proc/meminfo")
FALLBACK_CPU_BYTES = 4 << 30
"""What a CPU is assumed to have free where ``/proc/meminfo`` cannot be read (not Linux)."""

_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("cbpt_guard_memory_limit", default=None)
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
T = TypeVar("T")


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes a stage's chunks may plan for, and where that figure came from (for messages)."""

    bytes: int
    source: str


@contextlib.contextmanager
def memory_limit(limit_bytes: int | None) -> Iterator[None]:
    """Plan every chunk inside the block for at most ``limit_bytes`` (None: the memory measured free).

    A fixed limit makes the chunks, and so the floating-point
    rounding of every stage, the same on every run of a machine, whatever else
    runs beside it.
    """
    token = _LIMIT.set(limit_bytes)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def free_bytes(device: torch.device) -> MemoryBudget:
    """Memory free for tensors on ``device`` now: CUDA's free memory plus torch's unused cache, or MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return MemoryBudget(int(free + cached), f"free memory of {torch.cuda.get_device_name(device)}")
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return MemoryBudget(int(line.split()[1]) * 1024, "MemAvailable")
    except OSError:
        pass
    return MemoryBudget(FALLBACK_CPU_BYTES, "an assumed 4 GiB (MemAvailable unreadable)")


def planning_budget(device: torch.device) -> MemoryBudget:
    """What chunks on ``device`` plan for: the fixed limit if set, else :data:`MEMORY_SHARE` of the free memory."""
    limit = _LIMIT.get()
    if limit is not None:
        return MemoryBudget(int(limit), "the run's memory limit")
    free = free_bytes(device)
    return MemoryBudget(int(free.bytes * MEMORY_SHARE), f"{MEMORY_SHARE:.0%} of {free.source}")


def image_cost(classifier: torch.nn.Module, *, grad: bool) -> int:
    """Bytes one more image costs a forward pass through ``classifier``'s image tower (with its backward if ``grad``).

    Measured once per model: the storages autograd saves for the backward of
    a 1-image and a 2-image forward (the weights, shared by both, cancel in the
    difference), times :data:`BACKWARD_FACTOR` for a backward. A forward
    without gradients holds far less (one layer at a time); it is planned with
    the same figure, a safe over-estimate.
    """
    model = getattr(classifier, "model", classifier)  # every classifier of one model shares its image tower
    cost = _COSTS.get(model)
    if cost is None:
        one, two = _saved_bytes(classifier, 1), _saved_bytes(classifier, 2)
        cost = max(two - one, 1)
        _COSTS[model] = cost
    return int(cost * BACKWARD_FACTOR) if grad else int(cost)


def _saved_bytes(classifier: torch.nn.Module, count: int) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``count`` images' features."""
    side = classifier.image_size
    device = classifier.scale.device
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    pixels = torch.full((count, 3, side, side), 0.5, device=device, requires_grad=True)  # (n, 3, S, S)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        features = classifier.features(pixels)  # (n, d)
    del features
    return sum(storages.values())


def chunk_size(wanted: int, per_item: int, budget: MemoryBudget) -> int:
    """How many of ``wanted`` items (each ``per_item`` bytes) to process at once within ``budget``: 1 to ``wanted``."""
    if wanted <= 1:
        return max(wanted, 1)
    return max(1, min(wanted, budget.bytes // max(per_item, 1)))


def images_at_once(classifier: torch.nn.Module, wanted: int, *, grad: bool) -> int:
    """The chunk of images, at most ``wanted`` (the stage's own batch), that fits the memory planned for."""
    device = classifier.scale.device
    return chunk_size(wanted, image_cost(classifier, grad=grad), planning_budget(device))


def bounds(count: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive chunks of at most ``size`` covering ``count`` items."""
    size = max(1, size)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


class Chunker:
    """One stage's chunk size, and its one retry with half the chunk after an out-of-memory error.

    ``run(work)`` calls ``work(size)``; ``work`` must be restartable (it zeroes
    gradients before it accumulates any). On ``torch.OutOfMemoryError`` the
    cache is released and ``work`` runs again with half the chunk, which is
    kept for the rest of the stage; a second error raises
    :class:`~cbpt_guard.errors.OutOfMemory` naming ``stage``.
    """

    def __init__(self, size: int, stage: str, unit: str = "images"):
        self.size, self.stage, self.unit = max(1, int(size)), stage, unit
        self.retried = False

    def run(self, work: Callable[[int], T]) -> T:
        """``work(self.size)``, retried once with a smaller chunk on an out-of-memory error."""
        while True:
            try:
                return work(self.size)
            except torch.OutOfMemoryError as error:
                _release()
                if self.retried or self.size <= 1:
                    raise OutOfMemory(
                        f"{self.stage} ran out of device memory with chunks of {self.size} {self.unit}"
                        f"{' after one retry at half the chunk' if self.retried else ''} ({_first_line(error)}); "
                        "free memory on the device (or run on the CPU) and run again") from None
                self.retried, self.size = True, max(1, math.ceil(self.size / 2))


def reports_out_of_memory(stage: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Make a stage entry point turn an out-of-memory error outside its chunked steps into :class:`OutOfMemory`.

    The text tower over every class, a model moved to the device: work no
    chunk bounds can still exhaust a GPU, and that too is a step the run could
    not take (exit 3), not a crash of the tool.
    """

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def guarded(*args, **kwargs) -> T:
            try:
                return function(*args, **kwargs)
            except torch.OutOfMemoryError as error:
                _release()
                raise OutOfMemory(f"{stage} ran out of device memory ({_first_line(error)}); free memory on the "
                                  "device (or run on the CPU) and run again") from None

        return guarded

    return decorate


def _release() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
