"""One ``check``: intake -> detection -> decision -> purification and verification -> export -> reports -> Verdict.

:func:`check` strings the stages together under a policy and returns a frozen
:class:`~cbpt_guard.verdict.Verdict`; it never prints (progress goes to a
callback) and never picks an exit code (the Verdict's decision carries it).

It only orchestrates: each stage's work lives in its own module
(``intake.checkpoint_info``, ``detect.stage``, ``purify.stage``,
``export.stage``), and what the stages found is kept in a
:class:`~cbpt_guard.run_log.RunLog`, whose frozen facts the decision is made on.

Failing closed is the rule: every stage runs through :func:`_stage`, so an
error inside any of them (intake included) is recorded by the one failure path
(:meth:`RunLog.fail`) and handed to :func:`cbpt_guard.decide.decide`, which
never lets an incomplete run pass. Only a usage error (a missing path, no
class names, an invalid policy) escapes as an exception, because then there is
nothing to judge.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from cbpt_guard.decide import Decision, DetectionOutcome, verification_misses
from cbpt_guard.detect.domain import domain_of_loaded
from cbpt_guard.detect.stage import DetectionStage, detect_budget, run_detection, uncalibrated_budget
from cbpt_guard.device import RunDevice, resolve
from cbpt_guard.errors import CbptError, TimeLimitExceeded, UncalibratedBudgetError, UsageError
from cbpt_guard.export.stage import ONNX_FILE, failed_export_info, run_export
from cbpt_guard.intake.checkpoint_info import checkpoint_info, unloaded_checkpoint
from cbpt_guard.policy import LoadedPolicy, Mode, resolve_policy
from cbpt_guard.progress import Progress, silent
from cbpt_guard.purify.stage import PROMPTS_DIR, PurificationStage, run_purification
from cbpt_guard.report import REPORT_FILES
from cbpt_guard.run_log import RunLog
from cbpt_guard.user_images import UserImages, check_folders, data_info, load_user_images
from cbpt_guard.verdict import Action, PurificationInfo, StepInfo, Verdict

__all__ = ["ONNX_FILE", "PROMPTS_DIR", "check", "detect_budget", "purify_checkpoint", "uncalibrated_budget"]

T = TypeVar("T")


def check(model: str | Path, *, policy: str | Path = "strict", out_dir: str | Path | None = None,
          probes: str | Path | None = None, data: str | Path | None = None, classes_file: str | Path | None = None,
          arch: str | None = None, seed: int = 0, today: dt.date | None = None,
          progress: Progress | None = None, mode: str | Mode | None = None, repo_root: str | None = None,
          device: str | None = None) -> Verdict:
    """Check the checkpoint at ``model`` under ``policy`` (a ready-policy name or a YAML path).

    ``device`` (auto, cpu, cuda) replaces the policy's ``run.device``; every
    stage runs there and the Verdict records the device that really ran.

    ``mode`` (enforce, warn, dry-run) replaces the policy's own mode for this run;
    the Verdict keeps the policy's (``policy.mode``) beside the one applied
    (``policy.mode_override``, ``decision.mode``).

    ``probes`` is a folder of unlabelled images (the unlabelled tier), ``data``
    a labelled few-shot ImageFolder (the few-shot tier, used to purify and to
    measure clean accuracy). With ``out_dir`` the reports, the Verdict JSON,
    the purified prompts and the ONNX export are written there, once; ``repo_root``
    is the folder the SARIF report's paths are relative to (default: the Actions
    workspace, else the git top level). Raises only
    usage errors (exit 4): among them folders that cannot serve, found right
    after intake; everything else ends up in the returned Verdict. A policy
    whose calibration was fitted at another detection budget skips detection
    (inconclusive) before any inversion. ``progress`` receives
    :class:`~cbpt_guard.progress.ProgressEvent` records (step counts, ETA) and
    plain lines between stages.
    """
    started = time.perf_counter()
    loaded_policy = resolve_policy(policy)
    log = RunLog(loaded_policy, seed, today or dt.date.today(), progress or silent, _mode(mode),
                 device=run_device(loaded_policy, device))
    out = Path(out_dir) if out_dir is not None else None
    check_folders(probes, data)
    uncalibrated = uncalibrated_budget(loaded_policy)  # a cheap file comparison: before any model is loaded

    loaded = _intake(log, model, arch, classes_file)
    inputs = UserImages()
    if loaded is not None:
        inputs = load_user_images(loaded.report, probes, data, probe_limit=detect_budget(loaded_policy).probes,
                                  seed=seed)
    log.data = data_info(probes, data, inputs)
    detection = None
    if loaded is not None and uncalibrated:
        log.skip("detection", uncalibrated, required=True)
    elif loaded is not None:
        detection = _detection(log, loaded, inputs)
    planned = log.decision()
    purified = None
    if planned.action is Action.PURIFY and detection is not None:
        purified = _purification(log, loaded, detection, inputs, out)
    elif planned.enforced is Action.PURIFY:
        log.skip("purification", f"{planned.mode.value} mode: enforce would purify", required=False)
    else:
        log.not_needed("purification", "the decision did not call for purification")
    _export(log, loaded, purified, out, log.decision())
    log.timings["total"] = round(time.perf_counter() - started, 3)
    verdict = log.verdict(log.decision())
    if out is not None:
        verdict = _write_reports(log, verdict, out, repo_root)
    return verdict


def run_device(loaded: LoadedPolicy, device: str | None) -> RunDevice:
    """The device of a run: ``device`` if given, else the policy's ``run.device``; a usage error if it is absent."""
    return resolve(device if device is not None else loaded.policy.run.device.value)


def _mode(mode: str | Mode | None) -> Mode | None:
    if mode is None or isinstance(mode, Mode):
        return mode
    try:
        return Mode(mode)
    except ValueError:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(m.value for m in Mode)}") from None


# -- stages: each runs through _stage, the one failure path ------------------------------------------


def _stage(log: RunLog, name: str, work: Callable[[], T], *, reason: Callable[[T], str] | None = None,
           on_crash: Callable[[BaseException], None] | None = None) -> T | None:
    """Run stage ``name``: its result, or None once :meth:`RunLog.fail` has recorded its error.

    Only a usage error escapes (there is nothing to judge then). ``reason``
    words a finished step; ``on_crash`` keeps what a crashed stage can still say.
    """
    started = time.perf_counter()
    try:
        result = work()
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - fail closed: a crash is never a pass, never "no evidence"
        if log.fail(name, started, error) and on_crash is not None:
            on_crash(error)
        return None
    log.done(name, started, reason(result) if reason else "")
    return result


def _intake(log: RunLog, model: str | Path, arch: str | None, classes_file):
    """Load the checkpoint safely; an unsafe or unscannable one ends the run's looking, not the run."""
    log.progress(f"intake: {model}")
    if log.device.is_cuda:
        log.progress(f"device: {log.device.name} ({log.device.gpu_name}, {log.device.precision})")
    loaded = _stage(log, "intake", lambda: _load(model, arch, classes_file, log.device))
    log.checkpoint = checkpoint_info(model, loaded.report) if loaded is not None else unloaded_checkpoint(model)
    return loaded


def _load(model: str | Path, arch: str | None, classes_file, device: RunDevice):
    """Load the checkpoint and move its model to the run's device: every stage follows the model from here on."""
    from cbpt_guard.intake import load_checkpoint

    loaded = load_checkpoint(model, arch=arch, classes_file=classes_file)
    loaded.report.require_classes(model)
    loaded.model.to(device.torch())
    return loaded


def _detection(log: RunLog, loaded, inputs: UserImages) -> DetectionStage | None:
    """Invert triggers under the policy's budget; a run past its time limit is a required step skipped."""
    detection = _stage(log, "detection",
                       lambda: run_detection(loaded.model, loaded.report, inputs.probes, log.policy, seed=log.seed,
                                             progress=log.progress, domain=domain_of_loaded(loaded)),
                       reason=lambda stage: stage.report.outcome.value)
    if detection is not None:
        log.detection = detection.info
        log.outcome = DetectionOutcome.from_report(detection.report)
    return detection


def _purification(log: RunLog, loaded, detection: DetectionStage, inputs: UserImages,
                  out: Path | None) -> PurificationStage | None:
    """CBPT and verification; the prompts are saved when there is an output folder."""
    target = log.outcome.target_class if log.outcome else None
    purified = _stage(log, "purification",
                      lambda: run_purification(loaded.model, loaded.report, detection, inputs, log.policy,
                                               target=target, seed=log.seed, progress=log.progress, out=out))
    if purified is not None:
        log.verification = purified.verification
        log.purification = purified.info(verification_misses(purified.verification, log.policy.policy.verification))
        if purified.prompts_path is not None:
            log.artefacts["prompts"] = purified.prompts_path
    return purified


def _export(log: RunLog, loaded, purified: PurificationStage | None, out: Path | None, decision: Decision) -> None:
    """Export the classifier that passes (purified, or hand-written for a clean model) and check its parity."""
    settings = log.policy.policy.export
    if not settings.enabled:
        log.not_needed("export", "the policy does not export")
        return
    if decision.enforced not in (Action.PASS, Action.PURIFIED) or loaded is None:
        log.not_needed("export", "only a model the policy passes is exported")
        return
    if out is None:
        log.skip("export", "no output folder was given", required=False)
        return
    report = loaded.report
    embeddings = purified.class_embeddings if purified is not None else None
    provenance = {"source_checkpoint_sha256": report.checkpoint_sha256, "policy_sha256": log.policy.sha256,
                  "prompts_sha256": log.purification.prompts_sha256 if log.purification else "hand-written"}

    def keep_failure(error: BaseException) -> None:
        log.export = failed_export_info(error, settings, purified=embeddings is not None, out=out)

    exported = _stage(log, "export", lambda: run_export(loaded.model, report, embeddings, settings, provenance, out,
                                                       seed=log.seed, progress=log.progress),
                      on_crash=keep_failure)
    if exported is not None:
        log.export = exported
        log.artefacts["onnx"] = ONNX_FILE


def _write_reports(log: RunLog, verdict: Verdict, out: Path, repo_root: str | None) -> Verdict:
    """Write every report format once; if that fails, the Verdict says so and fails closed."""
    from cbpt_guard.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.artefacts.update(REPORT_FILES)
    log.steps["reports"] = StepInfo(name="reports", state="done", required=True)
    verdict = verdict.model_copy(update={"artefacts": dict(log.artefacts), "steps": log.ordered_steps()})
    try:
        write_reports(verdict, out, repo_root=repo_root)
    except Exception as error:  # noqa: BLE001 - the reports are part of what the gate promises
        log.fail("reports", started, error)
        verdict = log.verdict(log.decision())
        (out / REPORT_FILES["verdict"]).write_text(verdict.to_json(), encoding="utf-8")
    return verdict


def purify_checkpoint(model: str | Path, *, data: str | Path | None = None, probes: str | Path | None = None,
                      policy: str | Path = "strict", shots: int | None = None, out_dir: str | Path | None = None,
                      classes_file: str | Path | None = None, arch: str | None = None, seed: int = 0,
                      progress: Progress | None = None, device: str | None = None) -> PurificationInfo:
    """Detect, then purify and verify whatever detection found, whatever a policy would decide.

    The stand-alone purification behind ``cbpt-guard purify``: the policy
    supplies the budgets, CBPT settings and bars (``shots`` overrides its
    few-shot count), and ``device`` replaces its ``run.device``. Unlike
    :func:`check`, any stage error is raised.
    """
    loaded_policy = resolve_policy(policy)
    if shots is not None:
        section = loaded_policy.policy.purification.model_copy(update={"shots": shots})
        loaded_policy = replace(loaded_policy, policy=loaded_policy.policy.model_copy(update={"purification": section}))
    log = RunLog(loaded_policy, seed, dt.date.today(), progress or silent, device=run_device(loaded_policy, device))
    check_folders(probes, data)
    uncalibrated = uncalibrated_budget(loaded_policy)
    if uncalibrated:
        raise UncalibratedBudgetError(uncalibrated)
    loaded = _load(model, arch, classes_file, log.device)
    inputs = load_user_images(loaded.report, probes, data, probe_limit=detect_budget(loaded_policy).probes, seed=seed)
    log.data = data_info(probes, data, inputs)
    detection = _detection(log, loaded, inputs)
    if detection is not None:
        _purification(log, loaded, detection, inputs, Path(out_dir) if out_dir else None)
    if log.failures:
        failure = log.failures[0]
        raise CbptError(f"{failure.stage} failed: {failure.message}")
    skipped = [step for step in log.skipped if step.required]
    if skipped:
        raise TimeLimitExceeded(f"{skipped[0].name}: {skipped[0].reason}")
    return log.purification
