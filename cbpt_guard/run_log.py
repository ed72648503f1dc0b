"""What one run's stages found, the facts the policy decides on, and the Verdict built from them.

The pipeline fills a :class:`RunLog` as its stages finish; every stage's error
goes through :meth:`RunLog.fail`, the one failure path, which sorts it (unsafe
input, a step that could not be made, a crash). The decision is never read
off this mutable log: :meth:`RunLog.facts` freezes what the decision looks at
into a :class:`~cbpt_guard.decide.DecisionInput`, and :meth:`RunLog.decision`
decides once per distinct set of facts.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from dataclasses import dataclass, field

from cbpt_guard import __version__
from cbpt_guard.decide import Decision, DecisionInput, DetectionOutcome, SkippedStep, StageFailure, decide
from cbpt_guard.device import CPU, RunDevice
from cbpt_guard.errors import (
    CbptError,
    OnnxRuntimeMissingError,
    OutOfMemory,
    TimeLimitExceeded,
    UnsafeCheckpointError,
)
from cbpt_guard.policy import DataTier, LoadedPolicy, Mode, Policy
from cbpt_guard.progress import Progress
from cbpt_guard.verdict import (
    CheckpointInfo,
    DataInfo,
    DecisionInfo,
    DetectionInfo,
    ExportInfo,
    GpuInfo,
    PolicyInfo,
    PurificationInfo,
    StepInfo,
    Verdict,
    Versions,
    WaiverInfo,
)
from cbpt_guard.verification import Verification

STAGES = ("intake", "detection", "purification", "export", "reports")


@dataclass
class RunLog:
    """What the stages found so far; :meth:`verdict` turns it into the frozen Verdict."""

    policy: LoadedPolicy
    seed: int
    today: dt.date
    progress: Progress
    mode: Mode | None = None
    device: RunDevice = CPU
    """Where every stage computes (the model is moved there after intake); the Verdict records it."""
    """The mode given in place of the policy's (``check --mode``); the Verdict records both."""
    steps: dict[str, StepInfo] = field(default_factory=dict)
    failures: list[StageFailure] = field(default_factory=list)
    skipped: list[SkippedStep] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    unsafe: tuple[str, ...] = ()
    checkpoint: CheckpointInfo | None = None
    data: DataInfo | None = None
    detection: DetectionInfo | None = None
    outcome: DetectionOutcome | None = None
    purification: PurificationInfo | None = None
    verification: Verification | None = None
    export: ExportInfo | None = None
    artefacts: dict[str, str] = field(default_factory=dict)
    _decided: tuple[DecisionInput, Decision] | None = field(default=None, repr=False, compare=False)

    def done(self, name: str, started: float, reason: str = "") -> None:
        """Stage ``name`` finished; every stage that runs is one the decision rests on (had it failed: closed)."""
        self.steps[name] = StepInfo(name=name, state="done", reason=reason, required=True)
        self.timings[name] = round(time.perf_counter() - started, 3)

    def fail(self, name: str, started: float, error: BaseException) -> bool:
        """Record stage ``name``'s error, the one failure path of every stage; True when it counts as a crash.

        Unsafe serialisation is evidence the policy weighs, not a tool failure; a
        checkpoint intake could not read is a run that could not look; a step
        that could not be made (a time limit, memory run out, a missing
        onnxruntime) is a required step skipped; anything else is a failed stage. Each fails closed as
        the policy says.
        """
        crashed = False
        if isinstance(error, UnsafeCheckpointError):
            self.unsafe = error.findings or ("unsafe serialisation",)
            self.steps[name] = StepInfo(name=name, state="failed", reason=str(error), required=True)
        elif name == "intake" and isinstance(error, CbptError):  # malformed, unsupported, nothing scannable
            self.steps[name] = StepInfo(name=name, state="failed", reason=str(error), required=True)
            self.skipped.append(SkippedStep(name, f"the checkpoint could not be scanned: {error}", True))
        elif isinstance(error, (TimeLimitExceeded, OutOfMemory, OnnxRuntimeMissingError)):
            self.skip(name, str(error), required=True)
        else:
            message = f"{type(error).__name__}: {error}" if not isinstance(error, CbptError) else str(error)
            self.failures.append(StageFailure(name, message))
            self.steps[name] = StepInfo(name=name, state="failed", reason=message, required=True)
            crashed = True
        self.timings[name] = round(time.perf_counter() - started, 3)
        return crashed

    def skip(self, name: str, reason: str, *, required: bool) -> None:
        """Stage ``name`` did not run, and why; a required one fails closed."""
        if required:
            self.skipped.append(SkippedStep(name, reason, required))
        self.steps[name] = StepInfo(name=name, state="skipped", reason=reason, required=required)

    def not_needed(self, name: str, reason: str) -> None:
        """Stage ``name`` had nothing to do in this run."""
        self.steps[name] = StepInfo(name=name, state="not-needed", reason=reason)

    @property
    def rules(self) -> Policy:
        """The policy the decision applies: the file's, in the overriding mode if one was given."""
        policy = self.policy.policy
        return policy if self.mode is None else policy.model_copy(update={"mode": self.mode})

    def facts(self) -> DecisionInput:
        """The frozen record of everything the decision looks at, as the stages have left it so far."""
        return DecisionInput(checkpoint_digest=self.checkpoint.digest if self.checkpoint else "",
                             data_tier=DataTier(self.data.tier) if self.data else DataTier.ZERO_DATA,
                             detection=self.outcome, unsafe_findings=self.unsafe, skipped=tuple(self.skipped),
                             failures=tuple(self.failures), purification=self.verification)

    def decision(self) -> Decision:
        """The policy's decision on :meth:`facts`: computed once per distinct set of facts, never from the log."""
        facts = self.facts()
        if self._decided is None or self._decided[0] != facts:
            self._decided = (facts, decide(facts, self.rules, today=self.today))
        return self._decided[1]

    def verdict(self, decision: Decision) -> Verdict:
        """The frozen Verdict of the run so far under ``decision``."""
        policy = self.policy
        checkpoint = self.checkpoint
        if self.unsafe and checkpoint is not None:
            checkpoint = checkpoint.model_copy(update={"unsafe_findings": tuple(self.unsafe)})
        return Verdict(
            evaluated_on=self.today.isoformat(), seed=self.seed, device=self.device.name, gpu=_gpu(self.device),
            checkpoint=checkpoint,
            policy=PolicyInfo(name=policy.name, source=policy.source, sha256=policy.sha256,
                              mode=policy.policy.mode.value,
                              mode_override=self.mode.value if self.mode is not None else None,
                              settings=policy.policy.model_dump(mode="json"),
                              waivers_applied=tuple(_waiver(w, False) for w in decision.waivers_applied),
                              waivers_expired=tuple(_waiver(w, True) for w in decision.waivers_expired)),
            versions=_versions(), data=self.data, detection=self.detection,
            decision=DecisionInfo(action=decision.action.value, enforced=decision.enforced.value,
                                  mode=decision.mode.value, reasons=decision.reasons,
                                  fail_closed=decision.fail_closed, exit_code=int(decision.exit_code)),
            purification=self.purification, export=self.export, steps=self.ordered_steps(),
            artefacts=dict(self.artefacts), timings=dict(self.timings))

    def ordered_steps(self) -> tuple[StepInfo, ...]:
        """The steps recorded so far, in the pipeline's order."""
        return tuple(self.steps[name] for name in STAGES if name in self.steps)


def _gpu(device: RunDevice) -> GpuInfo | None:
    if not device.is_cuda:
        return None
    return GpuInfo(name=device.gpu_name or "unknown", memory_gib=device.gpu_memory_gib or 0.0,
                   precision=device.precision)


def _versions() -> Versions:
    from importlib import metadata

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return Versions(cbpt_guard=__version__, python=platform.python_version(), torch=version("torch"),
                    open_clip=version("open_clip_torch"), onnxruntime=version("onnxruntime", "onnxruntime-gpu"))


def _waiver(waiver, expired: bool) -> WaiverInfo:
    return WaiverInfo(id=waiver.id, scope=waiver.scope, reason=waiver.reason, owner=waiver.owner,
                      expires=waiver.expires.isoformat(), expired=expired)
