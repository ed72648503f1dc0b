"""The policy file's schema: frozen pydantic models, one per section, unknown keys rejected.

A policy says how strict the gate is: the mode, the data it needs, how hard the
detector looks, what backdoor evidence leads to, what a purified model must reach,
how it is exported, and which findings are waived for which checkpoint until when.
The models validate *values*; reading YAML safely and naming the file and line of
each problem is :mod:`cbpt_guard.policy.load`'s job.

Types are strict where YAML's loose typing could hide a mistake: an integer field
refuses ``true`` and ``"300"``, a flag refuses ``1``, a text field refuses a
number. Fractions (ASR, CA drop) are written as 0..1, not as percentages.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import types
import typing
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from cbpt_guard.errors import UsageError

POLICY_VERSION = 1
"""The only ``version`` this release reads."""


class PolicyProblem(typing.NamedTuple):
    """One thing wrong with a policy: where (file, line, key) and what."""

    source: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(UsageError):
    """A policy file cannot be used: unreadable, not safe YAML, or not a valid policy (exit 4).

    ``problems`` holds every problem found, earliest line first; ``str(error)`` is
    one of them (``file:line: key: message``) and a count of the others, so it
    fits on one line of a CI log. That one is the first unknown key when there
    is one: a misspelt key is usually the cause of the "required key is
    missing" beside it, and the line a reader must see.
    """

    def __init__(self, problems: typing.Sequence[PolicyProblem]):
        self.problems = tuple(problems)
        if not self.problems:
            raise ValueError("a PolicyError needs at least one problem")
        unknown = [p for p in self.problems if p.message.startswith("unknown key")]
        headline = unknown[0] if unknown else self.problems[0]
        more = len(self.problems) - 1
        super().__init__(str(headline) + (f" (and {more} more)" if more else ""))


class Mode(str, enum.Enum):
    """What the gate does with its decision."""

    ENFORCE = "enforce"
    """Act on the decision: pass, purify, block or inconclusive, with the matching exit code."""
    WARN = "warn"
    """Report what enforce would do, as warnings, and let the model through (exit 0)."""
    DRY_RUN = "dry-run"
    """Rehearse a policy: record what enforce would do and exit 0."""


class Device(str, enum.Enum):
    """Where a run computes (cbpt_guard/device.py); the Verdict records what really ran."""

    AUTO = "auto"
    """A CUDA GPU when one is visible, else the CPU."""
    CPU = "cpu"
    CUDA = "cuda"
    """A CUDA GPU, or a usage error (exit 4) when there is none."""


class DataTier(str, enum.Enum):
    """The images the defender brings, weakest first (METHOD.md section 2)."""

    ZERO_DATA = "zero-data"
    UNLABELLED = "unlabelled"
    FEW_SHOT = "few-shot"

    @property
    def rank(self) -> int:
        """Position in the order zero-data < unlabelled < few-shot, for "at least this tier" checks."""
        return list(DataTier).index(self)


class TriggerFamily(str, enum.Enum):
    """The trigger families the detector inverts (METHOD.md section 3)."""

    PATCH = "patch"
    ADDITIVE = "additive"
    WARP = "warp"


class BackdoorAction(str, enum.Enum):
    """What backdoor evidence leads to."""

    PURIFY = "purify"
    BLOCK = "block"


class FailClosedAction(str, enum.Enum):
    """What a run that could not finish leads to; never a pass."""

    INCONCLUSIVE = "inconclusive"
    BLOCK = "block"


class DummyScope(str, enum.Enum):
    """Which dummy triggers verification holds to ``max_asr``."""

    ALL = "all"
    """Every dummy trigger detection inverted, whatever class it draws images to."""
    EVIDENCE = "evidence"
    """The dummies that are evidence of the backdoor: toward the suspected
    target class, or with detection evidence of their own over the threshold.
    Detection also inverts patterns toward a small model's natural attractors
    (classes clean models drift to as well); such a dummy need only not rise
    above ``max_asr`` or its own rate before purification plus one point of
    measuring noise (``verification.RISE_TOLERANCE``), whichever is higher.
    With no dummy that is evidence, every dummy is held."""


class FailOn(str, enum.Enum):
    """An outcome that passes by default which a policy may turn into a failing exit code."""

    PURIFIED = "purified"
    """Backdoor evidence, purified and verified: exit 1 instead of 0 (the purified classifier is still exported)."""


class FindingLevel(str, enum.Enum):
    """The SARIF level (code-scanning severity) a finding is reported at."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _as_date(value: object) -> dt.date:
    """Accept a real calendar date (YAML ``2025-12-31`` or the same text quoted), nothing else."""
    if isinstance(value, dt.datetime):
        raise ValueError("must be a date (YYYY-MM-DD), not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value.strip()} is not a real date") from None
    raise ValueError("must be a date written YYYY-MM-DD")


def _as_digest(value: object) -> object:
    """Normalise a SHA-256 hex digest to lower case; refuse anything else."""
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value.strip()):
        raise ValueError("must be a SHA-256 checkpoint digest: 64 hexadecimal characters")
    return value.strip().lower()


Text = Annotated[str, Field(strict=True, min_length=1, max_length=2000)]
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]  # strict float still takes an integer such as 1
Flag = Annotated[bool, Field(strict=True)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
Date = Annotated[dt.date, BeforeValidator(_as_date)]
Digest = Annotated[str, BeforeValidator(_as_digest)]


class _Section(BaseModel):
    """Common settings: frozen, unknown keys rejected, no NaN or infinity anywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSettings(_Section):
    """The data a run must have."""

    tier: DataTier = DataTier.ZERO_DATA
    """The weakest data tier the policy accepts; a run with less is incomplete."""


class DetectionBudget(_Section):
    """How much work trigger inversion does per family, in steps, and how long a detection run may take."""

    steps: Annotated[Int, Field(ge=1, le=100_000)] = 300
    batch_size: Annotated[Int, Field(ge=1, le=4096)] = 32
    time_limit_s: Annotated[Float, Field(gt=0, le=86_400)] = 3600.0
    """Wall-clock limit of a whole detection run: past it the run stops, inconclusive. It never shortens a stage."""
    targeted_classes: Annotated[Int, Field(ge=0, le=1000)] = 4
    """Classes the targeted patch inversion is aimed at (0 skips it, which leaves detection inconclusive)."""
    anomaly_classes: Annotated[Int, Field(ge=4, le=100_000)] = 32
    """Classes the per-class anomaly searches: all of a model with no more, else a screen's suspects and a random
    reference, so the search costs the same at 1,000 classes as at 100 (cbpt_guard/detect/anomaly.py)."""


class DetectionSettings(_Section):
    """Detection: budgets, the families to invert, and where the score threshold comes from.

    Exactly one of ``score_threshold`` (a fixed bar on the backdoor score in 0..1)
    and ``calibration`` is set: a calibration file (relative to the policy file),
    or ``builtin`` for the calibration shipped with the package (fitted on the
    zoo's clean twins at the default budget: 300 steps, batch 32).
    """

    budget: DetectionBudget = DetectionBudget()
    families: Annotated[tuple[TriggerFamily, ...], Field(min_length=1)] = tuple(TriggerFamily)
    score_threshold: Annotated[Float, Field(gt=0.0, lt=1.0)] | None = None
    calibration: Text | None = None

    @field_validator("families")
    @classmethod
    def _families_unique(cls, families: tuple[TriggerFamily, ...]) -> tuple[TriggerFamily, ...]:
        if len(set(families)) != len(families):
            raise ValueError("lists a family twice")
        return families

    @model_validator(mode="after")
    def _one_threshold_source(self) -> DetectionSettings:
        if (self.score_threshold is None) == (self.calibration is None):
            raise ValueError("set exactly one of score_threshold and calibration")
        return self


class EvidenceRules(_Section):
    """What each kind of evidence, or missing evidence, leads to."""

    on_backdoor: BackdoorAction = BackdoorAction.PURIFY
    on_required_skipped: FailClosedAction = FailClosedAction.INCONCLUSIVE
    """Also applies when detection itself is inconclusive or the data tier is too weak."""
    on_stage_failure: FailClosedAction = FailClosedAction.INCONCLUSIVE
    unsafe_serialisation_blocks: Flag = True


class LossWeights(_Section):
    """The CBPT loss weights: L = L_clean + l_bd * L_bd + l_drift * L_drift + l_distill * L_distill.

    METHOD.md section 5 has the first three; the distillation term (clean
    predictions held to the hand-written prompts') is cbpt_guard's, see
    :func:`cbpt_guard.purify.losses.distill_loss`.
    """

    l_bd: Annotated[Float, Field(ge=0.0, le=1000.0)] = 2.0
    l_drift: Annotated[Float, Field(ge=0.0, le=1000.0)] = 1.0
    l_distill: Annotated[Float, Field(ge=0.0, le=1000.0)] = 100.0


class PurificationSettings(_Section):
    """Class-wise prompt tuning: context length, optimisation and data.

    These defaults are the single source of every purification default: the
    product's :class:`~cbpt_guard.purify.api.PurifySettings` and
    :func:`~cbpt_guard.purify.trainer.tune_prompts` and the purification
    benchmark (benchmarks/purification.py) all read them, so a policy that
    leaves ``purification:`` out runs exactly the settings the benchmark
    measured (benchmarks/PURIFICATION.md).
    """

    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 4
    steps: Annotated[Int, Field(ge=1, le=100_000)] = 100
    lr: Annotated[Float, Field(gt=0.0, le=1.0)] = 1e-2
    loss_weights: LossWeights = LossWeights()
    margin: Annotated[Float, Field(ge=0.0, le=100.0)] = 8.0
    """How far past the decision boundary, in logits, the backdoor term pushes stamped images
    (:func:`cbpt_guard.purify.losses.leave_loss`)."""
    shots: Annotated[Int, Field(ge=1, le=16)] = 16
    """Labelled images per class used in the few-shot tier."""


class VerificationBars(_Section):
    """The bars a purified model must meet, as fractions (0.02 is 2%, or 2 points of CA)."""

    max_asr: Fraction = 0.02
    max_ca_drop: Fraction = 0.02
    dummies: DummyScope = DummyScope.ALL
    """Which dummy triggers ``max_asr`` holds (:class:`DummyScope`)."""


class DecisionRules(_Section):
    """What a decision that passes means for the exit code and the code-scanning alert.

    A pass that rests on purification is its own outcome (``purified``): the
    original weights are backdoored and only the purified classifier may be
    deployed. By default it exits 0 and its backdoor finding stays in SARIF as a
    warning; ``fail_on: [purified]`` makes it exit 1 for pipelines that cannot
    deploy a purified classifier in place of the checkpoint they were given.
    """

    fail_on: tuple[FailOn, ...] = ()
    purified_level: FindingLevel = FindingLevel.WARNING
    """The SARIF level of the backdoor finding on a checkpoint whose purified classifier passed."""

    @field_validator("fail_on")
    @classmethod
    def _fail_on_unique(cls, outcomes: tuple[FailOn, ...]) -> tuple[FailOn, ...]:
        if len(set(outcomes)) != len(outcomes):
            raise ValueError("lists an outcome twice")
        return outcomes


class ExportSettings(_Section):
    """ONNX export of the purified classifier."""

    enabled: Flag = True
    fp16: Flag = False
    parity_tolerance: Annotated[Float, Field(gt=0.0, le=1.0)] = 1e-4
    """Largest absolute logit difference between ONNX Runtime and PyTorch in float32 (fp16 uses its own bar)."""


class RunSettings(_Section):
    """How the run computes; never what it decides (the CLI's ``--device`` overrides ``device``)."""

    device: Device = Device.AUTO


class SweepSettings(_Section):
    """How ``cbpt-guard sweep`` runs each model's check on Ray: its share of a GPU and its budgets.

    A model whose check runs past ``time_budget_s`` or grows its worker past
    ``memory_budget_mb`` is stopped and recorded as a required step skipped
    (``evidence.on_required_skipped``), never as clean. ``check`` ignores this section.
    """

    gpus_per_model: Annotated[Float, Field(gt=0.0, le=8.0)] = 1.0
    """GPUs one check asks Ray for where the cluster has GPUs (a fraction shares one); CPU-only clusters ask none."""
    time_budget_s: Annotated[Float, Field(gt=0, le=86_400)] = 7200.0
    """Wall-clock budget of one model's whole check (intake to reports) inside a sweep."""
    memory_budget_mb: Annotated[Int, Field(ge=64, le=4_194_304)] | None = None
    """Resident memory a check's worker may reach; also reserved from Ray's scheduler. None: no budget."""


class Waiver(_Section):
    """A signed-off exception: the backdoor finding on one checkpoint is accepted until a date."""

    id: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    scope: Digest
    """The SHA-256 of the checkpoint's weights file the waiver covers."""
    reason: Text
    owner: Text
    expires: Date
    """The last day the waiver holds; from the day after, its finding is active again."""

    def is_expired(self, today: dt.date) -> bool:
        """Whether the waiver no longer holds on ``today``."""
        return today > self.expires


class Policy(_Section):
    """A whole policy file (``version: 1``)."""

    version: Int
    description: Text | None = None
    mode: Mode
    data: DataSettings = DataSettings()
    detection: DetectionSettings
    evidence: EvidenceRules = EvidenceRules()
    purification: PurificationSettings = PurificationSettings()
    verification: VerificationBars = VerificationBars()
    decision: DecisionRules = DecisionRules()
    export: ExportSettings = ExportSettings()
    run: RunSettings = RunSettings()
    sweep: SweepSettings = SweepSettings()
    waivers: tuple[Waiver, ...] = ()

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != POLICY_VERSION:
            raise ValueError(f"unsupported policy version {version}; this cbpt-guard reads version {POLICY_VERSION}")
        return version

    @field_validator("waivers")
    @classmethod
    def _waiver_ids_unique(cls, waivers: tuple[Waiver, ...]) -> tuple[Waiver, ...]:
        ids = [w.id for w in waivers]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"waiver id used more than once: {', '.join(twice)}")
        return waivers


def allowed_keys(path: typing.Sequence[str | int]) -> tuple[str, ...] | None:
    """The keys a policy accepts in the mapping at ``path`` (list indices included), or None if not a mapping.

    Used to turn "unknown key" errors into a hint that lists what is allowed.
    """
    target: object = Policy
    for part in path:
        target = _unwrap(target)
        if isinstance(part, int):
            args = typing.get_args(target)
            if typing.get_origin(target) is not tuple or not args:
                return None
            target = args[0]
        elif isinstance(target, type) and issubclass(target, BaseModel) and part in target.model_fields:
            target = target.model_fields[part].annotation
        else:
            return None
    target = _unwrap(target)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return tuple(target.model_fields)
    return None


def _unwrap(annotation: object) -> object:
    """Strip ``Annotated`` and ``X | None`` down to the type that holds the fields."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation
