"""One ``check``: intake -> detection -> decision -> purification and verification -> export -> reports -> Verdict.

:func:`check` strings the stages together under a policy and returns a frozen
:class:`~cbpt_guard.verdict.Verdict`; it never prints (progress goes to a
callback) and never picks an exit code (the Verdict's decision carries it).

Failing closed is the rule: an error inside a stage is recorded as a failed
step and handed to :func:`cbpt_guard.decide.decide`, which never lets an
incomplete run pass. Only a usage error (a missing path, no class names, an
invalid policy) escapes as an exception, because then there is nothing to judge.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from cbpt_guard import __version__
from cbpt_guard.decide import (
    Action,
    Decision,
    DecisionInput,
    DetectionOutcome,
    SkippedStep,
    StageFailure,
    decide,
    verification_misses,
)
from cbpt_guard.errors import (
    CbptError,
    OnnxRuntimeMissingError,
    OutOfMemory,
    TimeLimitExceeded,
    UnsafeCheckpointError,
    UsageError,
)
from cbpt_guard.policy import DataTier, LoadedPolicy, Mode, Policy, resolve_policy
from cbpt_guard.progress import Progress
from cbpt_guard.report import REPORT_FILES
from cbpt_guard.user_images import UserImages, check_folders, data_info, load_user_images
from cbpt_guard.verdict import (
    CheckpointInfo,
    DataInfo,
    DecisionInfo,
    DetectionInfo,
    ExportInfo,
    FamilyEvidence,
    FileDigest,
    Metrics,
    PolicyInfo,
    PurificationInfo,
    StepInfo,
    Verdict,
    Versions,
    WaiverInfo,
)
from cbpt_guard.verification import Verification

PROMPTS_DIR = "purified"
ONNX_FILE = "classifier.onnx"
CURVE_POINTS = 200
STAGES = ("intake", "detection", "purification", "export", "reports")


@dataclass
class _Run:
    """What the stages found so far; :func:`_verdict` turns it into the frozen Verdict."""

    policy: LoadedPolicy
    seed: int
    today: dt.date
    progress: Progress
    mode: Mode | None = None
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

    def done(self, name: str, started: float, reason: str = "") -> None:
        # Every stage that runs is one the policy's decision rests on: had it failed, the run would fail closed.
        self.steps[name] = StepInfo(name=name, state="done", reason=reason, required=True)
        self.timings[name] = round(time.perf_counter() - started, 3)

    def fail(self, name: str, started: float, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}" if not isinstance(error, CbptError) else str(error)
        self.failures.append(StageFailure(name, message))
        self.steps[name] = StepInfo(name=name, state="failed", reason=message, required=True)
        self.timings[name] = round(time.perf_counter() - started, 3)

    def skip(self, name: str, reason: str, *, required: bool) -> None:
        if required:
            self.skipped.append(SkippedStep(name, reason, required))
        self.steps[name] = StepInfo(name=name, state="skipped", reason=reason, required=required)

    def not_needed(self, name: str, reason: str) -> None:
        self.steps[name] = StepInfo(name=name, state="not-needed", reason=reason)

    def decide(self) -> Decision:
        tier = DataTier(self.data.tier) if self.data else DataTier.ZERO_DATA
        digest = self.checkpoint.digest if self.checkpoint else ""
        return decide(DecisionInput(checkpoint_digest=digest, data_tier=tier, detection=self.outcome,
                                    unsafe_findings=self.unsafe, skipped=tuple(self.skipped),
                                    failures=tuple(self.failures), purification=self.verification),
                      self.rules, today=self.today)

    @property
    def rules(self) -> Policy:
        """The policy the decision applies: the file's, in the overriding mode if one was given."""
        policy = self.policy.policy
        return policy if self.mode is None else policy.model_copy(update={"mode": self.mode})


def check(model: str | Path, *, policy: str | Path = "strict", out_dir: str | Path | None = None,
          probes: str | Path | None = None, data: str | Path | None = None, classes_file: str | Path | None = None,
          arch: str | None = None, seed: int = 0, today: dt.date | None = None,
          progress: Progress | None = None, mode: str | Mode | None = None) -> Verdict:
    """Check the checkpoint at ``model`` under ``policy`` (a ready-policy name or a YAML path).

    ``mode`` (enforce, warn, dry-run) replaces the policy's own mode for this run;
    the Verdict keeps the policy's (``policy.mode``) beside the one applied
    (``policy.mode_override``, ``decision.mode``).

    ``probes`` is a folder of unlabelled images (the unlabelled tier), ``data``
    a labelled few-shot ImageFolder (the few-shot tier, used to purify and to
    measure clean accuracy). With ``out_dir`` the reports, the Verdict JSON,
    the purified prompts and the ONNX export are written there. Raises only
    usage errors (exit 4): among them folders that cannot serve, found right
    after intake; everything else ends up in the returned Verdict. A policy
    whose calibration was fitted at another detection budget skips detection
    (inconclusive) before any inversion. ``progress`` receives
    :class:`~cbpt_guard.progress.ProgressEvent` records (step counts, ETA) and
    plain lines between stages.
    """
    started = time.perf_counter()
    loaded_policy = resolve_policy(policy)
    run = _Run(loaded_policy, seed, today or dt.date.today(), progress or (lambda line: None), _mode(mode))
    out = Path(out_dir) if out_dir is not None else None
    check_folders(probes, data)
    uncalibrated = uncalibrated_budget(loaded_policy)  # a cheap file comparison: before any model is loaded

    loaded = _intake(run, model, arch, classes_file)
    inputs = UserImages()
    if loaded is not None:
        inputs = load_user_images(loaded.report, probes, data, probe_limit=detect_budget(run.policy).probes,
                                  seed=run.seed)
    run.data = data_info(probes, data, inputs)
    evidence = calibration = None
    if loaded is not None and uncalibrated:
        run.skip("detection", uncalibrated, required=True)
    elif loaded is not None:
        evidence, calibration = _detection(run, loaded, inputs.probes)
    first = run.decide()
    purified_embeddings = None
    if first.action is Action.PURIFY and evidence is not None:
        purified_embeddings = _purification(run, loaded, evidence, calibration, inputs, out)
    elif first.enforced is Action.PURIFY:
        run.skip("purification", f"{first.mode.value} mode: enforce would purify", required=False)
    else:
        run.not_needed("purification", "the decision did not call for purification")
    _export(run, loaded, purified_embeddings, out)
    run.timings["total"] = round(time.perf_counter() - started, 3)
    verdict = _verdict(run, run.decide())
    if out is not None:
        verdict = _write_reports(run, verdict, out)
    return verdict


def uncalibrated_budget(loaded: LoadedPolicy) -> str | None:
    """Why the policy's calibration does not apply to its detection budget, or None when it does.

    Read before any model is loaded, so a mismatched policy ends the run fast
    (detection skipped, inconclusive) with the command that fits a calibration.
    """
    from cbpt_guard.detect.budget import budget_differences, uncalibrated_reason

    budget = detect_budget(loaded)
    calibration = policy_calibration(loaded)
    differences = budget_differences(calibration.budget, budget)
    return uncalibrated_reason(calibration.source, budget, differences) if differences else None


def _mode(mode: str | Mode | None) -> Mode | None:
    if mode is None or isinstance(mode, Mode):
        return mode
    try:
        return Mode(mode)
    except ValueError:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(m.value for m in Mode)}") from None


# -- stages -------------------------------------------------------------------------------------------


def _intake(run: _Run, model: str | Path, arch: str | None, classes_file):
    """Load the checkpoint safely; an unsafe or unscannable one ends the run's looking, not the run."""
    from cbpt_guard.intake import load_checkpoint

    run.progress(f"intake: {model}")
    started = time.perf_counter()
    try:
        loaded = load_checkpoint(model, arch=arch, classes_file=classes_file)
    except UnsafeCheckpointError as error:
        run.unsafe = error.findings or ("unsafe serialisation",)
        run.checkpoint = _unloaded_checkpoint(model)
        # unsafe input is evidence the policy weighs (unsafe_findings), not a tool failure
        run.steps["intake"] = StepInfo(name="intake", state="failed", reason=str(error), required=True)
        run.timings["intake"] = round(time.perf_counter() - started, 3)
        return None
    except UsageError:
        raise
    except CbptError as error:  # malformed, unsupported, nothing scannable: the run could not look
        run.checkpoint = _unloaded_checkpoint(model)
        run.steps["intake"] = StepInfo(name="intake", state="failed", reason=str(error), required=True)
        run.skipped.append(SkippedStep("intake", f"the checkpoint could not be scanned: {error}", True))
        run.timings["intake"] = round(time.perf_counter() - started, 3)
        return None
    except Exception as error:  # noqa: BLE001 - a crafted file must not crash its way past the gate
        run.checkpoint = _unloaded_checkpoint(model)
        run.fail("intake", started, error)
        return None
    report = loaded.report
    report.require_classes(model)
    run.checkpoint = CheckpointInfo(
        path=str(model), digest=report.checkpoint_sha256, architecture=report.architecture, layout=report.layout,
        parameter_count=report.parameter_count, image_size=report.image_size, classes=report.classes,
        classes_source=report.classes_source, templates=report.templates,
        files=tuple(FileDigest(path=f.path, size=f.size, sha256=f.sha256, kind=f.kind, role=f.role)
                    for f in report.files))
    run.done("intake", started)
    return loaded


def _detection(run: _Run, loaded, probe_set):
    """Invert triggers under the policy's budget and judge them against its calibration.

    A run past the policy's time limit is a required step skipped (inconclusive),
    never a block and never a result cut short.
    """
    from cbpt_guard.detect.run import gather_evidence, judge

    started = time.perf_counter()
    budget = detect_budget(run.policy)
    calibration = policy_calibration(run.policy)
    report = loaded.report
    try:
        evidence = gather_evidence(loaded.model, report.classes, report.templates, probes=probe_set, budget=budget,
                                   seed=run.seed, progress=run.progress)
        detection = judge(evidence, calibration, budget, run.seed)
    except UsageError:
        raise
    except (TimeLimitExceeded, OutOfMemory) as error:
        run.skip("detection", str(error), required=True)
        run.timings["detection"] = round(time.perf_counter() - started, 3)
        return None, None
    except Exception as error:  # noqa: BLE001 - fail closed: a crash is never "no evidence"
        run.fail("detection", started, error)
        return None, None
    run.detection = detection_info(detection, calibration)
    note = "; ".join(f"{name}: {why}" for name, why in detection.skipped) or None
    run.outcome = DetectionOutcome(result=detection.outcome, score=detection.score, threshold=detection.threshold,
                                   target_class=detection.suspected_target, note=note)
    run.done("detection", started, detection.outcome.value)
    return evidence, calibration


def _purification(run: _Run, loaded, evidence, calibration, inputs: UserImages, out: Path | None):
    """CBPT and verification; the prompts are saved when there is an output folder."""
    from cbpt_guard.purify.api import PurifySettings, purify_and_verify
    from cbpt_guard.purify.artifacts import save_prompts
    from cbpt_guard.purify.verify import recheck_wording, verify

    started = time.perf_counter()
    report = loaded.report
    policy = run.policy.policy
    settings = PurifySettings.from_policy(policy.purification)
    try:
        result = purify_and_verify(loaded.model, report.classes, report.templates, evidence, calibration,
                                   settings=settings, data=inputs.data, probes=inputs.probes,
                                   detect_budget=detect_budget(run.policy), seed=run.seed,
                                   target=run.outcome.target_class if run.outcome else None, progress=run.progress)
    except UsageError:
        raise
    except (TimeLimitExceeded, OutOfMemory) as error:  # re-detection past its limit or out of memory: nothing verified
        run.skip("purification", str(error), required=True)
        run.timings["purification"] = round(time.perf_counter() - started, 3)
        return None
    except Exception as error:  # noqa: BLE001 - fail closed
        run.fail("purification", started, error)
        return None
    bars = policy.verification
    residual = result.residual_evidence
    run.verification = verify(result.dummies, result.before, result.after, result.ca_drop, residual,
                                      report.classes, run.detection, bars)
    misses = verification_misses(run.verification, bars)
    prompts_path = prompts_digest = None
    metrics = {"before": _metrics(result.before).model_dump(), "after": _metrics(result.after).model_dump(),
               "ca_drop": result.ca_drop, "recheck_score": result.residual.score, "recheck_residual": residual}
    if out is not None:
        saved = save_prompts(out / PROMPTS_DIR, ctx=result.tuning.ctx, class_embeddings=result.tuning.class_embeddings,
                             original_embeddings=result.tuning.original_embeddings,
                             source_digest=report.checkpoint_sha256, classes=report.classes,
                             settings=_settings_dict(settings, result.tier), metrics=metrics)
        prompts_path = saved.relative_to(out).as_posix()
        from cbpt_guard.purify.artifacts import load_prompts

        prompts_digest = load_prompts(saved).sha256
        run.artefacts["prompts"] = prompts_path
    run.purification = PurificationInfo(
        tier=result.tier, train_images=result.train_images, held_out_images=result.held_out_images,
        settings=_settings_dict(settings, result.tier), families=tuple(d.family for d in result.dummies),
        before=_metrics(result.before), after=_metrics(result.after),
        recheck_outcome=recheck_wording(result.recheck, result.residual, residual),
        recheck_score=result.residual.score,
        recheck_seed=result.recheck.seed,
        bars={"max_asr": bars.max_asr, "max_ca_drop": bars.max_ca_drop}, bars_met=not misses, misses=misses,
        dummy_bars={dummy.family: dummy.bar for dummy in run.verification.dummies},
        curves={name: _thin(values) for name, values in result.tuning.curves.items()},
        prompts_path=prompts_path, prompts_sha256=prompts_digest)
    run.done("purification", started)
    return result.tuning.class_embeddings


def _export(run: _Run, loaded, purified_embeddings, out: Path | None) -> None:
    """Export the classifier that passes (purified, or hand-written for a clean model) and check its parity."""
    settings = run.policy.policy.export
    if not settings.enabled:
        run.not_needed("export", "the policy does not export")
        return
    decision = run.decide()
    if decision.enforced not in (Action.PASS, Action.PURIFIED) or loaded is None:
        run.not_needed("export", "only a model the policy passes is exported")
        return
    if out is None:
        run.skip("export", "no output folder was given", required=False)
        return
    from cbpt_guard.classifier import ZeroShotClassifier, build_classifier
    from cbpt_guard.export import export_classifier
    from cbpt_guard.export.onnx_export import ParityError

    started = time.perf_counter()
    report = loaded.report
    classifier = (build_classifier(loaded.model, report.classes, report.templates) if purified_embeddings is None
                  else ZeroShotClassifier(loaded.model, purified_embeddings))
    provenance = {"source_checkpoint_sha256": report.checkpoint_sha256, "policy_sha256": run.policy.sha256,
                  "prompts_sha256": run.purification.prompts_sha256 if run.purification else "hand-written"}
    try:  # fp16 has its own, looser default tolerance; the policy's figure is for float32
        result = export_classifier(classifier, out / ONNX_FILE, classes=report.classes, provenance=provenance,
                                   fp16=settings.fp16, tolerance=None if settings.fp16 else settings.parity_tolerance,
                                   seed=run.seed, progress=run.progress)
    except (OnnxRuntimeMissingError, OutOfMemory) as error:  # nothing against the model: the check could not be made
        run.skip("export", str(error), required=True)
        run.timings["export"] = round(time.perf_counter() - started, 3)
        return
    except ParityError as error:  # exported but unfaithful: keep the numbers that condemned it
        run.fail("export", started, error)
        run.export = error.result.to_export_info(relative_to=out, error=str(error))
        return
    except Exception as error:  # noqa: BLE001 - a failed export is a failed step, never a pass
        run.fail("export", started, error)
        run.export = ExportInfo(path=None, sha256=None, purified=purified_embeddings is not None, fp16=settings.fp16,
                                provider=None, max_abs_diff=None, max_rel_diff=None, top1_agreement=None,
                                tolerance=settings.parity_tolerance, passed=False, error=str(error))
        return
    run.export = result.to_export_info(relative_to=out)
    run.artefacts["onnx"] = ONNX_FILE
    run.done("export", started)


def _write_reports(run: _Run, verdict: Verdict, out: Path) -> Verdict:
    """Write every report format; if that fails, the Verdict says so and fails closed."""
    from cbpt_guard.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run.artefacts.update(REPORT_FILES)
    run.steps["reports"] = StepInfo(name="reports", state="done", required=True)
    verdict = verdict.model_copy(update={"artefacts": dict(run.artefacts), "steps": _ordered(run.steps)})
    try:
        write_reports(verdict, out)
    except Exception as error:  # noqa: BLE001 - the reports are part of what the gate promises
        run.fail("reports", started, error)
        verdict = _verdict(run, run.decide())
        (out / REPORT_FILES["verdict"]).write_text(verdict.to_json(), encoding="utf-8")
    return verdict


# -- helpers ------------------------------------------------------------------------------------------


def detect_budget(loaded: LoadedPolicy):
    """The detection budget a policy sets: steps and batch per inversion, families, targeted classes, time limit.

    The time limit bounds the whole detection run; it only aborts a run that
    would overrun it (inconclusive) and never shortens a stage.
    """
    from cbpt_guard.detect.budget import DetectBudget

    section = loaded.policy.detection
    default = DetectBudget()
    inversion = replace(default.inversion, steps=section.budget.steps, batch_size=section.budget.batch_size)
    return replace(default, families=tuple(f.value for f in section.families), inversion=inversion,
                   targeted_classes=section.budget.targeted_classes, time_limit_s=section.budget.time_limit_s,
                   anomaly_classes=section.budget.anomaly_classes)


def policy_calibration(loaded: LoadedPolicy):
    """The calibration a policy names: ``builtin``, a file beside the policy, or the built-in stats at a fixed bar."""
    from cbpt_guard.detect.calibration import builtin_calibration, load_calibration

    section = loaded.policy.detection
    if section.calibration == "builtin":
        return builtin_calibration()
    if section.calibration is not None:
        return load_calibration(loaded.calibration_path)
    return replace(builtin_calibration(), threshold=section.score_threshold)


def detection_info(report, calibration) -> DetectionInfo:
    """The Verdict's view of a DetectionReport (wall-clock fields left out; they go to ``timings``)."""
    families = tuple(FamilyEvidence(family=f.family, collapsed=f.collapsed, size=f.size, target=f.target,
                                    concentration=f.concentration, entropy=f.entropy, inverted_asr=f.inverted_asr,
                                    histogram=f.histogram, z=f.z, steps_run=f.steps_run,
                                    budget_exhausted=False, images=dict(f.images))
                     for f in report.families)
    return DetectionInfo(outcome=report.outcome.value, score=report.score, threshold=report.threshold,
                         suspected_target=report.suspected_target, calibration=report.calibration,
                         calibration_scores=tuple(calibration.reference_scores), families=families,
                         anomaly_index=report.anomaly.anomaly_index if report.anomaly else None,
                         anomaly_suspect=report.anomaly.suspect if report.anomaly else None,
                         features=dict(report.features), seed=report.seed, budget=report.budget,
                         skipped=report.skipped)


def _metrics(metrics) -> Metrics:
    return Metrics(clean_accuracy=metrics.clean_accuracy, agreement=metrics.agreement,
                   dummy_asr=dict(metrics.dummy_asr))


def _settings_dict(settings, tier: str) -> dict:
    from dataclasses import asdict

    return {**asdict(settings), "tier": tier}


def _thin(values: list[float]) -> tuple[float, ...]:
    """At most CURVE_POINTS evenly spaced points of a curve, the last one kept."""
    if len(values) <= CURVE_POINTS:
        return tuple(values)
    stride = len(values) / CURVE_POINTS
    return tuple(values[min(len(values) - 1, round(i * stride))] for i in range(CURVE_POINTS - 1)) + (values[-1],)


def _unloaded_checkpoint(model: str | Path) -> CheckpointInfo:
    """What can be said of a checkpoint that was not loaded: its files and their digests, read as bytes only.

    The files are the ones intake would read (:func:`cbpt_guard.intake.walk.model_files`): a link out of
    the folder is not followed here either.
    """
    import hashlib

    from cbpt_guard.intake.walk import model_files

    root = Path(model)
    paths = model_files(root).files if root.is_dir() else ((root,) if root.is_file() else ())
    files, digest = [], ""
    for path in paths:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        weights = path.suffix.lower() in {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"}
        files.append(FileDigest(path=path.relative_to(root).as_posix() if root.is_dir() else path.name,
                                size=path.stat().st_size, sha256=sha, kind="unread",
                                role="weights" if weights else "other"))
        if weights and not digest:
            digest = sha
    return CheckpointInfo(path=str(model), digest=digest, architecture="unknown", layout="unknown",
                          parameter_count=0, image_size=(0, 0), classes=(), classes_source=None, templates=(),
                          files=tuple(files), unsafe_findings=())


def _ordered(steps: dict[str, StepInfo]) -> tuple[StepInfo, ...]:
    return tuple(steps[name] for name in STAGES if name in steps)


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


def _verdict(run: _Run, decision: Decision) -> Verdict:
    policy = run.policy
    checkpoint = run.checkpoint
    if run.unsafe and checkpoint is not None:
        checkpoint = checkpoint.model_copy(update={"unsafe_findings": tuple(run.unsafe)})
    return Verdict(
        evaluated_on=run.today.isoformat(), seed=run.seed, device="cpu", checkpoint=checkpoint,
        policy=PolicyInfo(name=policy.name, source=policy.source, sha256=policy.sha256, mode=policy.policy.mode.value,
                          mode_override=run.mode.value if run.mode is not None else None,
                          settings=policy.policy.model_dump(mode="json"),
                          waivers_applied=tuple(_waiver(w, False) for w in decision.waivers_applied),
                          waivers_expired=tuple(_waiver(w, True) for w in decision.waivers_expired)),
        versions=_versions(), data=run.data, detection=run.detection,
        decision=DecisionInfo(action=decision.action.value, enforced=decision.enforced.value,
                              mode=decision.mode.value, reasons=decision.reasons, fail_closed=decision.fail_closed,
                              exit_code=int(decision.exit_code)),
        purification=run.purification, export=run.export, steps=_ordered(run.steps), artefacts=dict(run.artefacts),
        timings=dict(run.timings))


def purify_checkpoint(model: str | Path, *, data: str | Path | None = None, probes: str | Path | None = None,
                      policy: str | Path = "strict", shots: int | None = None, out_dir: str | Path | None = None,
                      classes_file: str | Path | None = None, arch: str | None = None, seed: int = 0,
                      progress: Progress | None = None) -> PurificationInfo:
    """Detect, then purify and verify whatever detection found, whatever a policy would decide.

    The stand-alone purification behind ``cbpt-guard purify``: the policy
    supplies the budgets, CBPT settings and bars (``shots`` overrides its
    few-shot count). Unlike :func:`check`, any stage error is raised.
    """
    from cbpt_guard.intake import load_checkpoint

    loaded_policy = resolve_policy(policy)
    if shots is not None:
        section = loaded_policy.policy.purification.model_copy(update={"shots": shots})
        loaded_policy = replace(loaded_policy, policy=loaded_policy.policy.model_copy(update={"purification": section}))
    run = _Run(loaded_policy, seed, dt.date.today(), progress or (lambda line: None))
    check_folders(probes, data)
    uncalibrated = uncalibrated_budget(loaded_policy)
    if uncalibrated:
        from cbpt_guard.errors import UncalibratedBudgetError

        raise UncalibratedBudgetError(uncalibrated)
    loaded = load_checkpoint(model, arch=arch, classes_file=classes_file)
    loaded.report.require_classes(model)
    inputs = load_user_images(loaded.report, probes, data, probe_limit=detect_budget(run.policy).probes, seed=seed)
    run.data = data_info(probes, data, inputs)
    evidence, calibration = _detection(run, loaded, inputs.probes)
    if evidence is not None:
        _purification(run, loaded, evidence, calibration, inputs, Path(out_dir) if out_dir else None)
    if run.failures:
        failure = run.failures[0]
        raise CbptError(f"{failure.stage} failed: {failure.message}")
    skipped = [step for step in run.skipped if step.required]
    if skipped:
        raise TimeLimitExceeded(f"{skipped[0].name}: {skipped[0].reason}")
    return run.purification
