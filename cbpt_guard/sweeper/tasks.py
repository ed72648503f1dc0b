"""What a Ray worker runs: safe intake of a batch of candidates, and one model's whole check.

Both bodies are plain functions (the engine wraps them in ``ray.remote``), and
both call only the package's public API (:func:`cbpt_guard.inspect`,
:func:`cbpt_guard.check`), so a swept model goes through exactly the gate that
``cbpt-guard check`` runs. Each returns a :class:`TaskOutcome` carrying the
Verdict and the report files as bytes: the driver writes them into its store,
so workers need to read the checkpoints but never to write the sweep's folder.

A check runs under the policy's per-model budgets (``sweep.time_budget_s``,
``sweep.memory_budget_mb``): a watchdog thread interrupts the check when one
runs out, and the outcome says which (the policy then decides, failing closed).
"""

from __future__ import annotations

import _thread
import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cbpt_guard.errors import CbptError, UsageError


@dataclass(frozen=True)
class CheckOptions:
    """The inputs every check of a sweep shares (the policy as given: a ready name or an absolute path)."""

    policy: str
    data: str | None = None
    probes: str | None = None
    classes_file: str | None = None
    arch: str | None = None
    seed: int = 0
    mode: str | None = None
    time_budget_s: float | None = None
    memory_budget_mb: int | None = None
    today: str | None = None
    """The sweep's date (ISO), against which every check weighs waivers' expiry."""


@dataclass(frozen=True)
class TaskOutcome:
    """One candidate's outcome from a worker.

    ``kind`` is ``checked`` (a Verdict in ``verdict_json`` and its reports in
    ``files``), ``passed-intake`` (stage 1 only: go on to detection), ``budget``
    (a per-model budget ran out; ``reason`` says which) or ``unjudgeable`` (the
    check refused the model as input, e.g. no class names; ``reason`` says why).
    """

    digest: str
    kind: str
    stage: str
    reason: str = ""
    verdict_json: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    node: str = ""
    seconds: float = 0.0
    gpus: tuple[str, ...] = ()
    """The GPUs Ray assigned to the task (none on a CPU-only cluster)."""


def intake_batch(items: list[tuple[str, str]], options: CheckOptions) -> list[TaskOutcome]:
    """Stage 1 over ``(digest, path)`` pairs: safe intake of each, cheap enough to batch many per task.

    A model intake refuses (unsafe, malformed, unsupported) is checked right
    here, which ends at intake, so its Verdict and reports come from the same
    ``check`` as every other model's; it never reaches detection.
    """
    import cbpt_guard

    outcomes = []
    for digest, path in items:
        started = time.perf_counter()
        watchdog = _Watchdog(options.time_budget_s, options.memory_budget_mb)
        try:
            with watchdog:
                cbpt_guard.inspect(path, arch=options.arch, classes_file=options.classes_file)
        except KeyboardInterrupt:
            if watchdog.reason is None:
                raise
            outcomes.append(TaskOutcome(digest, "budget", "intake", watchdog.reason, node=_node(),
                                        seconds=round(time.perf_counter() - started, 3)))
            continue
        except UsageError as error:
            outcomes.append(TaskOutcome(digest, "unjudgeable", "intake", str(error), node=_node(),
                                        seconds=round(time.perf_counter() - started, 3)))
            continue
        except Exception:  # noqa: BLE001 - refused or crashed: the check below records why, failing closed
            outcomes.append(_check(digest, path, options, "intake", started))
            continue
        outcomes.append(TaskOutcome(digest, "passed-intake", "intake", node=_node(),
                                    seconds=round(time.perf_counter() - started, 3)))
    return outcomes


def check_model(digest: str, path: str, options: CheckOptions) -> TaskOutcome:
    """Stage 2 for one model that passed intake: the whole check (detection, and purification per policy)."""
    return _check(digest, path, options, "detection", time.perf_counter())


def _check(digest: str, path: str, options: CheckOptions, stage: str, started: float) -> TaskOutcome:
    import cbpt_guard

    folder = Path(tempfile.mkdtemp(prefix="cbpt-sweep-"))
    watchdog = _Watchdog(options.time_budget_s, options.memory_budget_mb)
    try:
        try:
            with watchdog:
                verdict = cbpt_guard.check(path, policy=options.policy, out_dir=folder / "out", probes=options.probes,
                                           data=options.data, classes_file=options.classes_file, arch=options.arch,
                                           seed=options.seed, mode=options.mode,
                                           today=dt.date.fromisoformat(options.today) if options.today else None)
        except KeyboardInterrupt:
            if watchdog.reason is None:
                raise  # a real interrupt (Ray cancelling the task), not a budget
            return TaskOutcome(digest, "budget", stage, watchdog.reason, node=_node(),
                               seconds=round(time.perf_counter() - started, 3))
        except UsageError as error:
            return TaskOutcome(digest, "unjudgeable", stage, str(error), node=_node(),
                               seconds=round(time.perf_counter() - started, 3))
        except CbptError as error:  # check records stage errors in its Verdict; this is the API refusing outright
            return TaskOutcome(digest, "unjudgeable", stage, str(error), node=_node(),
                               seconds=round(time.perf_counter() - started, 3))
        out = folder / "out"
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        return TaskOutcome(digest, "checked", stage, verdict_json=verdict.to_json(), files=files, node=_node(),
                           seconds=round(time.perf_counter() - started, 3), gpus=_gpus())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Watchdog:
    """Interrupts the main thread when the check outlives its time budget or its worker outgrows its memory budget.

    Ray runs a task in its worker's main thread, so ``_thread.interrupt_main``
    raises KeyboardInterrupt inside the check, which is then abandoned; ``reason``
    tells that apart from a real interrupt. The interrupt is only raised while
    the check runs (a lock guards the hand-over), so it cannot hit the code after it.
    """

    PERIOD_S = 0.2

    def __init__(self, time_budget_s: float | None, memory_budget_mb: int | None):
        self.time_budget_s = time_budget_s
        self.memory_budget_mb = memory_budget_mb
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Watchdog:
        if self.time_budget_s is None and self.memory_budget_mb is None:
            return self
        self._active = True
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="cbpt-sweep-budget", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._active = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.reason is not None and exc[0] is None:
            _absorb_pending_interrupt()
            raise KeyboardInterrupt

    def _watch(self) -> None:
        while not self._stop.wait(self.PERIOD_S):
            reason = self._exceeded()
            if reason is None:
                continue
            with self._lock:
                if self._active:
                    self.reason = reason
                    _thread.interrupt_main()
            return

    def _exceeded(self) -> str | None:
        elapsed = time.monotonic() - self._started
        if self.time_budget_s is not None and elapsed > self.time_budget_s:
            return f"the model's check ran past the sweep's time budget of {self.time_budget_s:g} s"
        if self.memory_budget_mb is not None:
            resident = resident_mb()
            if resident is not None and resident > self.memory_budget_mb:
                return (f"the model's check grew its worker to {resident:.0f} MB, past the sweep's memory budget "
                        f"of {self.memory_budget_mb} MB")
        return None


def _absorb_pending_interrupt() -> None:
    """Let an interrupt already on its way arrive here, where it is expected, rather than later."""
    try:
        for _ in range(50):
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc, else psutil), or None where neither tells."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - no way to measure: the budget cannot be applied, the check still runs
        return None


def _gpus() -> tuple[str, ...]:
    """The GPU ids Ray gave this task (it also sets CUDA_VISIBLE_DEVICES to them), or none outside Ray."""
    try:
        import ray

        return tuple(str(gpu) for gpu in ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return ()


def _node() -> str:
    """The Ray node this runs on (its id), or the host name outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        import socket

        return socket.gethostname()
