"""The typed records a sweep passes between its stages, and how decisions rank.

A sweep turns many sources into :class:`Candidate` records (a path and the
SHA-256 of its files), schedules one check per distinct digest, and ends with
one :class:`ModelResult` per candidate in a :class:`SweepResult`. Everything is
a frozen dataclass so a record read back from the store is the record written.
No torch and no Ray here: the CLI and the report read these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEVERITY = {0: 0, 4: 1, 3: 2, 2: 3, 1: 4}
"""Exit codes ranked by how bad they are for the sweep's own exit code: a block is worst, then a tool error,
then an inconclusive model, then a pass. The sweep exits with the worst code among its models."""


def worst_exit_code(codes) -> int:
    """The most severe exit code of ``codes`` (:data:`SEVERITY`); 3 (inconclusive) for none: nothing was judged."""
    codes = list(codes)
    if not codes:
        return 3
    return max(codes, key=lambda code: SEVERITY.get(code, SEVERITY[2]))


@dataclass(frozen=True)
class FileEntry:
    """One file of a candidate: its path relative to the candidate, size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Candidate:
    """One checkpoint found by a source: a model directory or a loose weights file.

    ``digest`` is the SHA-256 over the sorted (path, SHA-256) pairs of its files,
    so the same bytes under two names are one model, and one changed byte is a
    new one. ``name`` is how reports show it (``org/name@revision`` for a hub
    mirror, ``name/version`` for a registry, the relative path for a folder).
    """

    name: str
    path: str
    source: str
    digest: str
    files: tuple[FileEntry, ...]


@dataclass(frozen=True)
class ModelResult:
    """What a sweep concluded for one candidate.

    ``status`` says how: ``scanned`` (checked in this sweep), ``reused`` (its
    verdict came from the store, keyed by digest, policy, calibration and tool
    version), ``duplicate`` (the same digest as ``duplicate_of``, checked once),
    or ``failed`` (the worker died twice or a budget ran out: no verdict, the
    policy's fail-closed decision instead). ``stage`` is the last stage reached:
    ``intake`` for a model that did not pass safe intake, else ``detection``.
    ``report`` is the model's report.html relative to the sweep's output folder;
    ``node`` and ``gpus`` say where its check ran (the Ray node, the GPUs Ray gave it).
    """

    name: str
    path: str
    source: str
    digest: str
    status: str
    stage: str
    action: str
    enforced: str
    exit_code: int
    reasons: tuple[str, ...]
    score: float | None = None
    threshold: float | None = None
    suspected_target: str | None = None
    seconds: float | None = None
    report: str | None = None
    node: str | None = None
    gpus: tuple[str, ...] = ()
    attempts: int = 0
    duplicate_of: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (one line of results.jsonl)."""
        return asdict(self)


@dataclass(frozen=True)
class StageCounts:
    """Counts per stage so far, for progress lines: done and total of each, plus reused and failed."""

    candidates: int
    unique: int
    reused: int
    intake_done: int
    intake_total: int
    detection_done: int
    detection_total: int
    failed: int
    elapsed_s: float
    eta_s: float | None = None
    """Seconds left at the mean time per model so far; None until each stage with work left has timed one."""

    def __str__(self) -> str:
        from cbpt_guard.progress import format_seconds

        eta = "ETA --" if self.eta_s is None else f"ETA {format_seconds(self.eta_s)}"
        return (f"sweep: {self.candidates} models ({self.unique} distinct, {self.reused} reused); "
                f"intake {self.intake_done}/{self.intake_total}, detection {self.detection_done}/"
                f"{self.detection_total}, failed {self.failed}; {format_seconds(self.elapsed_s)} elapsed, {eta}")


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: one result per candidate (blocked first), its exit code, and where the reports are."""

    results: tuple[ModelResult, ...]
    exit_code: int
    out_dir: str
    policy: str
    policy_sha256: str
    scanned: int
    reused: int
    failed: int
    wall_s: float
    nodes: tuple[str, ...] = field(default=())
    files: dict[str, str] = field(default_factory=dict)
