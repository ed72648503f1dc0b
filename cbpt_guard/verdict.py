"""The Verdict: one frozen object that records a whole ``check`` run, for every reporter.

The pipeline builds it, the CLI maps it to an exit code, and every report
format (JSON, HTML, Markdown, SARIF) renders from it alone, so two formats can
never disagree. It imports no torch: a saved Verdict can be re-rendered on a
machine without the ML stack.

Determinism: the same inputs, policy, seed and day give a byte-identical
:meth:`Verdict.to_json`. Wall-clock figures live only in ``timings`` (per stage)
and are left out of the digest-stable JSON unless asked for; paths of written
artefacts are relative to the output folder.
"""

from __future__ import annotations

import enum
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

VERDICT_SCHEMA_VERSION = 1
"""Bumped whenever a field is renamed or removed; readers refuse versions they do not know."""

class Action(str, enum.Enum):
    """What the gate does with a checkpoint: :func:`cbpt_guard.decide.decide` picks one, the Verdict records it.

    Defined here, below the decision, so the Verdict's reader validates the same
    five values the decision produces; the Verdict stores the plain string.
    """

    PASS = "pass"
    """No backdoor evidence (or a waived finding): the checkpoint itself may be deployed."""
    PURIFIED = "purified"
    """Backdoor evidence, purified and verified: deploy the purified classifier, never the original weights
    (see :data:`PURIFIED_ADVICE`)."""
    PURIFY = "purify"
    """Purification was called for but did not run."""
    INCONCLUSIVE = "inconclusive"
    """The run could not look properly: nothing may be deployed."""
    BLOCK = "block"
    """Nothing may be deployed."""

    # The value, not "Action.PASS", wherever an action is formatted (str() of a mixed-in enum varies by Python).
    __str__ = str.__str__
    __format__ = str.__format__

PURIFIED_ADVICE = "deploy the purified classifier, not the original weights"
"""What a ``purified`` decision asks of whoever deploys; the decision, every report and the terminal say it."""

StepState = Literal["done", "skipped", "failed", "not-needed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileDigest(_Frozen):
    """One file of the checkpoint as intake read it."""

    path: str
    size: int
    sha256: str
    kind: str
    role: str


class CheckpointInfo(_Frozen):
    """What was checked: where it is, its digest (the weights file's SHA-256, the waiver scope), what it is."""

    path: str
    digest: str
    architecture: str
    layout: str
    parameter_count: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    classes_source: str | None
    templates: tuple[str, ...]
    files: tuple[FileDigest, ...]
    unsafe_findings: tuple[str, ...] = ()
    """Globals a pickle in the checkpoint imports that no checkpoint needs (non-empty: loading was refused)."""


class WaiverInfo(_Frozen):
    """A waiver of the policy that matched this checkpoint."""

    id: str
    scope: str
    reason: str
    owner: str
    expires: str
    expired: bool


class PolicyInfo(_Frozen):
    """The policy the run applied, by name and the digest of its exact bytes."""

    name: str
    source: str
    sha256: str
    mode: str
    """The mode the policy file sets."""
    settings: dict
    """The whole validated policy, defaults filled in, as plain JSON."""
    waivers_applied: tuple[WaiverInfo, ...] = ()
    waivers_expired: tuple[WaiverInfo, ...] = ()
    mode_override: str | None = None
    """The mode given on the command line in its place (``check --mode``), which the decision applied; None if none."""


class DataInfo(_Frozen):
    """The images the run used: the tier reached and where they came from."""

    tier: str
    probes: str
    """"procedural" or the folder given with ``--probes``."""
    labelled: str | None = None
    """The few-shot ImageFolder given with ``--data``, if any."""
    probe_files_skipped: tuple[tuple[str, str], ...] = ()


class FamilyEvidence(_Frozen):
    """One trigger family's inversion, as the report shows it."""

    family: str
    collapsed: bool
    size: float
    target: str
    concentration: float
    entropy: float
    inverted_asr: float
    histogram: tuple[int, ...]
    """Stamped probes per class (index-aligned with the checkpoint's classes)."""
    z: float | None
    """Standardised evidence as the score used it: lowered by the calibration's attractor margin when the
    target is a class the clean references' same family also landed on."""
    steps_run: int
    budget_exhausted: bool
    """Always false now: budgets are counted in steps and a run past its time limit stops, inconclusive, with
    no evidence at all. Kept only so that verdict.json files written before still load (the model refuses
    unknown keys); no report shows it."""
    images: dict[str, str]
    """PNG data URIs: clean, stamped, and mask/pattern, perturbation or flow."""


class ReferenceFreeInfo(_Frozen):
    """The reference-free score (``cbpt_guard.detect.reference_free``): from this model alone, no references."""

    score: float | None
    """In [0, 1]: how much more specifically (beyond random patches of the same size) the most specific class
    is reached than the other classes examined; None when too few classes were examined."""
    target: str | None
    found: bool
    """Whether it is itself conclusive evidence (at least ``found_at``, not a natural attractor's pull)."""
    found_at: float
    specific: dict[str, float]
    """Per examined class, its specific reach."""
    attractors: tuple[str, ...]
    """Classes random patches already reach at several times chance: the model's natural attractors."""
    note: str
    reaches: tuple[dict, ...] = ()
    """Each patch search: class, source, area, reach, the random patches' reach, specific reach."""


class DetectionInfo(_Frozen):
    """Detection's outcome and evidence (METHOD.md sections 3 and 4)."""

    outcome: str
    """"backdoor evidence found", "no evidence of a backdoor found" or "inconclusive"."""
    score: float
    threshold: float
    suspected_target: str | None
    calibration: str
    calibration_scores: tuple[float, ...] = ()
    """The clean references' own scores under the calibration, for the score-vs-clean plot."""
    families: tuple[FamilyEvidence, ...]
    anomaly_index: float | None
    anomaly_suspect: str | None
    features: dict[str, float]
    seed: int
    budget: dict
    skipped: tuple[tuple[str, str], ...] = ()
    reference_free: ReferenceFreeInfo | None = None
    """Reported beside the calibrated score; the decision rests on it when ``uncalibrated`` is set."""
    uncalibrated: str | None = None
    """"uncalibrated for this model family: ..." with what differs and the command that fixes it; None when the
    model belongs to the family its calibration was fitted on."""


class Metrics(_Frozen):
    """Accuracy-side and attack-side numbers of one classifier, as fractions."""

    clean_accuracy: float | None = None
    """On held-out labelled images (few-shot tier); None without labels."""
    agreement: float | None = None
    """Share of clean held-out images where the classifier agrees with the original model's prediction."""
    dummy_asr: dict[str, float] = {}
    """Per detected trigger family: share of non-target images the inverted trigger sends to its target."""


class PurificationInfo(_Frozen):
    """CBPT and its verification (METHOD.md sections 5 and 6)."""

    tier: str
    train_images: int
    held_out_images: int
    settings: dict
    families: tuple[str, ...]
    """The trigger families whose dummy triggers were used."""
    before: Metrics
    after: Metrics
    recheck_outcome: str
    """The fresh detection run against the purified classifier, worded like detection's outcome."""
    recheck_score: float
    """Its score on classifier-level evidence only (concentration, inverted ASR, per-class anomaly):
    the unchanged encoders still collapse stamped features, what must be gone is where they land."""
    recheck_seed: int
    bars: dict[str, float]
    bars_met: bool
    misses: tuple[str, ...] = ()
    dummy_bars: dict[str, float] = {}
    """Per dummy family, the ASR bar verification held it to: ``max_asr``, or under the policy's
    ``dummies: evidence`` the higher of ``max_asr`` and its rate before plus one point (``verification.RISE_TOLERANCE``)
    for a dummy that is not backdoor evidence."""
    curves: dict[str, tuple[float, ...]] = {}
    """Loss curves (total, clean, backdoor, drift), thinned to at most 200 points."""
    prompts_path: str | None = None
    prompts_sha256: str | None = None


class ExportInfo(_Frozen):
    """ONNX export of the deployable classifier and its parity check against PyTorch."""

    path: str | None
    sha256: str | None
    purified: bool
    fp16: bool
    provider: str | None
    max_abs_diff: float | None
    max_rel_diff: float | None
    top1_agreement: float | None
    tolerance: float
    passed: bool
    error: str | None = None


class StepInfo(_Frozen):
    """One stage of the run: done, skipped (and whether the policy required it), failed, or not needed."""

    name: str
    state: StepState
    reason: str = ""
    required: bool = False


class DecisionInfo(_Frozen):
    """The gate's answer: the action in this run's mode, what enforce would do, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    action: Action
    enforced: Action
    mode: str
    reasons: tuple[str, ...]
    fail_closed: bool
    exit_code: int


class GpuInfo(_Frozen):
    """The GPU a run computed on (cbpt_guard/device.py): what it is, and at what precision its encoders ran."""

    name: str
    memory_gib: float
    precision: str
    """E.g. ``bfloat16 autocast, TF32 matmuls``: what is and is not bit-stable there is in docs/device.md."""


class Versions(_Frozen):
    """Versions of the tool and of the libraries that produced the numbers."""

    cbpt_guard: str
    python: str
    torch: str | None = None
    open_clip: str | None = None
    onnxruntime: str | None = None


class Verdict(_Frozen):
    """Everything one ``cbpt-guard check`` run decided and why; see the module docstring."""

    schema_version: int = VERDICT_SCHEMA_VERSION
    tool: str = "cbpt-guard"
    evaluated_on: str
    """The day (YYYY-MM-DD) waivers were judged against."""
    seed: int
    device: str
    """What really ran: ``cpu`` or ``cuda:N`` (whatever was asked for)."""
    gpu: GpuInfo | None = None
    """The GPU behind a ``cuda`` device; None on the CPU."""
    checkpoint: CheckpointInfo
    policy: PolicyInfo
    versions: Versions
    data: DataInfo | None = None
    detection: DetectionInfo | None = None
    decision: DecisionInfo
    purification: PurificationInfo | None = None
    export: ExportInfo | None = None
    steps: tuple[StepInfo, ...] = ()
    artefacts: dict[str, str] = {}
    """Written files by role (verdict, html, markdown, sarif, prompts, onnx), relative to the output folder."""
    timings: dict[str, float] = {}
    """Seconds per stage: the one part of the Verdict that varies between identical runs."""

    def to_json(self, *, include_timings: bool = True) -> str:
        """The Verdict as pretty, key-sorted JSON; without timings it is byte-identical across identical runs."""
        data = self.model_dump(mode="json")
        if not include_timings:
            data.pop("timings")
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        """Read a Verdict written by :meth:`to_json`; refuses another schema version with a ValueError."""
        data = json.loads(text)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != VERDICT_SCHEMA_VERSION:
            raise ValueError(f"unsupported Verdict schema_version {version!r}; this cbpt-guard reads "
                             f"{VERDICT_SCHEMA_VERSION}")
        return cls.model_validate(data)

    @property
    def device_label(self) -> str:
        """The device for a reader: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB, bfloat16 autocast, ...)``."""
        if self.gpu is None:
            return self.device
        return f"{self.device} ({self.gpu.name}, {self.gpu.memory_gib:g} GiB, {self.gpu.precision})"

    @property
    def passed(self) -> bool:
        """Whether the gate lets the model through (exit code 0); see :attr:`purified` for *what* passed."""
        return self.decision.exit_code == 0

    @property
    def purified(self) -> bool:
        """Whether the pass rests on purification: deploy the purified classifier, never the original weights."""
        return self.decision.action == "purified"
