"""Gate a list of checkpoints: check each (the check writes its reports), and write the run's combined files.

The check function is injected (default: :func:`cbpt_guard.check`), so the
integration can be tested without running detection. A check that raises does not
stop the others: a typed error keeps its exit code, anything else is an internal
error (exit 2), and either way the outcome is reported, never dropped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from cbpt_guard.errors import CbptError, ExitCode, UsageError
from cbpt_guard.github.outcome import CheckpointOutcome
from cbpt_guard.github.policy_overrides import PolicyOverrides, effective_policy
from cbpt_guard.progress import Progress

CheckFn = Callable[..., object]
"""``check(model, *, policy, out_dir, seed, progress, repo_root, probes, data, classes_file) -> Verdict``, as
cbpt_guard.check: it writes the Verdict's reports into ``out_dir``."""


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """How to gate: the policy and its overrides, the data, the seed, where the repository and the reports are.

    ``probes``, ``data`` and ``classes`` are paths relative to ``root`` (an
    absolute path is taken as it is), shared by every checkpoint of the run;
    None leaves the choice to :func:`cbpt_guard.check` (procedural probes, no
    labelled data, the class names of each model's own manifest).
    """

    policy: str = "strict"
    overrides: PolicyOverrides = PolicyOverrides()
    seed: int = 0
    out_dir: str = "cbpt-guard-report"
    root: str = "."
    probes: str | None = None
    """A folder of unlabelled probe images (the unlabelled data tier)."""
    data: str | None = None
    """A labelled few-shot ImageFolder, one subfolder per class (the few-shot tier, used to purify)."""
    classes: str | None = None
    """A class-names file that replaces each checkpoint's manifest class list."""
    policy_sha256: str | None = None
    """The SHA-256 the policy file must have (see :mod:`cbpt_guard.github.trusted_policy`)."""
    device: str | None = None
    """auto, cpu or cuda for every checkpoint; None leaves it to the policy's ``run.device``."""


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The combined files of a run, for the workflow to upload."""

    summary_md: str
    sarif: str
    html_reports: tuple[str, ...]
    verdicts: tuple[str, ...]
    purified_models: tuple[str, ...]


def default_check() -> CheckFn:
    """The real check, imported only when a gate runs (it pulls in torch)."""
    from cbpt_guard import check

    return check


def gate_targets(targets: Sequence[str], settings: GateSettings, *, check_fn: CheckFn | None = None,
                 progress: Progress | None = None) -> list[CheckpointOutcome]:
    """Check each target (a path relative to ``settings.root``) and write its reports; one outcome each.

    Raises only for problems with the run as a whole, before any checkpoint is
    checked: an invalid policy or override
    (:class:`cbpt_guard.policy.schema.PolicyError`, exit 4) or a probes, data or
    classes path that does not exist (:class:`UsageError`, exit 4).
    """
    from cbpt_guard.policy.load import resolve_policy

    out = Path(settings.out_dir)
    inputs = check_inputs(settings)  # a missing data path is the whole run's usage error, as a bad policy is
    policy = effective_policy(settings.policy, settings.overrides, out / "policy")
    resolve_policy(policy)  # a bad policy is the whole run's usage error, not one checkpoint's
    check = check_fn or default_check()
    outcomes = []
    used: set[str] = set()
    for target in targets:
        folder = out / unique_slug(target, used)
        if progress:
            progress(f"checking {target}")
        outcomes.append(_check_one(target, folder, policy, settings, inputs, check, progress))
    return outcomes


def check_inputs(settings: GateSettings) -> dict[str, str | None]:
    """The data keyword arguments of :func:`cbpt_guard.check` (``probes``, ``data``, ``classes_file``).

    Each given path is joined to ``settings.root`` and must exist as the right
    kind (a folder, a folder, a file); otherwise a one-line :class:`UsageError`
    names the setting and the path, before any checkpoint is looked at.
    """
    return {"probes": _existing(settings.root, settings.probes, "probes", "folder"),
            "data": _existing(settings.root, settings.data, "data", "folder"),
            "classes_file": _existing(settings.root, settings.classes, "classes", "file")}


def _existing(root: str, value: str | None, name: str, kind: str) -> str | None:
    """``value`` joined to ``root``, checked to be an existing ``kind`` (folder or file); None stays None."""
    if not value:
        return None
    path = Path(root) / value
    # repr() keeps the message on one line whatever the value holds (newlines, control characters).
    where = "" if Path(value).is_absolute() else f" (relative to {str(Path(root).resolve())!r})"
    try:
        exists, right_kind = path.exists(), (path.is_dir() if kind == "folder" else path.is_file())
    except (OSError, ValueError) as error:  # a name too long, or one the OS refuses: still a usage error
        raise UsageError(f"the {name} {kind} {value!r} cannot be looked up{where}: "
                         f"{getattr(error, 'strerror', None) or error}") from None
    if not exists:
        raise UsageError(f"the {name} {kind} {value!r} does not exist{where}")
    if not right_kind:
        raise UsageError(f"the {name} {kind} {value!r} is not a {kind}{where}")
    return str(path)


def write_run_files(outcomes: Sequence[CheckpointOutcome], markdown: str, out_dir: str) -> RunFiles:
    """Write the run's Markdown summary and merged SARIF into ``out_dir``; list every report for upload."""
    from cbpt_guard.github.sarif import merge_sarif_files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.md"
    summary.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    sarifs = [o.reports["sarif"] for o in outcomes if o.reports.get("sarif")]
    sarif = merge_sarif_files(sarifs, str(out / "results.sarif"))
    purified = []
    for outcome in outcomes:
        export = outcome.verdict.export if outcome.verdict is not None else None
        if export is not None and export.path and export.passed:
            purified.append(str(Path(outcome.out_dir) / export.path))
    return RunFiles(summary_md=str(summary), sarif=sarif,
                    html_reports=tuple(o.reports["html"] for o in outcomes if o.reports.get("html")),
                    verdicts=tuple(o.reports["json"] for o in outcomes if o.reports.get("json")),
                    purified_models=tuple(purified))


def headline_metrics(outcomes: Sequence[CheckpointOutcome]) -> dict[str, dict]:
    """Per checkpoint: decision, score and threshold, and the purification numbers before and after."""
    metrics = {}
    for outcome in outcomes:
        row: dict = {"decision": outcome.decision, "exit_code": outcome.exit_code}
        verdict = outcome.verdict
        if verdict is not None and verdict.detection is not None:
            row |= {"score": verdict.detection.score, "threshold": verdict.detection.threshold,
                    "suspected_target": verdict.detection.suspected_target}
        if verdict is not None and verdict.purification is not None:
            before, after = verdict.purification.before, verdict.purification.after
            row |= {"asr_before": max(before.dummy_asr.values(), default=None),
                    "asr_after": max(after.dummy_asr.values(), default=None),
                    "clean_accuracy_before": before.clean_accuracy, "clean_accuracy_after": after.clean_accuracy,
                    "agreement_after": after.agreement, "bars_met": verdict.purification.bars_met}
        metrics[outcome.target] = row
    return metrics


def _check_one(target: str, folder: Path, policy: str, settings: GateSettings, inputs: dict[str, str | None],
               check: CheckFn, progress: Progress | None) -> CheckpointOutcome:
    """One checkpoint: the Verdict and the reports its check wrote, or the error that prevented them.

    The check writes the reports, once, with the SARIF paths relative to the
    repository root; a failure to write them is its own fail-closed step in the
    Verdict. The gate only lists what was written.
    """
    from cbpt_guard.report import REPORT_FILES

    folder.mkdir(parents=True, exist_ok=True)
    model = str(Path(settings.root) / target)
    try:
        device = {"device": settings.device} if settings.device is not None else {}
        verdict = check(model, policy=policy, out_dir=str(folder), seed=settings.seed, progress=progress,
                        repo_root=settings.root, **inputs, **device)
    except CbptError as error:
        return CheckpointOutcome(target, str(folder), error=str(error), error_exit_code=int(error.exit_code))
    except Exception as error:  # noqa: BLE001 - one crashing checkpoint must not hide the others' verdicts
        return CheckpointOutcome(target, str(folder), error=f"internal error: {type(error).__name__}: {error}",
                                 error_exit_code=int(ExitCode.TOOL_ERROR))
    return CheckpointOutcome(target, str(folder), verdict=verdict, reports=_by_format(REPORT_FILES, folder))


def _by_format(written: dict[str, str], folder: Path) -> dict[str, str]:
    """The reports found written under ``folder``, keyed by format (json, html, md, sarif)."""
    suffixes = {".json": "json", ".html": "html", ".md": "md", ".sarif": "sarif"}
    reports = {}
    for name in written.values():
        path = folder / name
        kind = suffixes.get(path.suffix)
        if kind and path.is_file():
            reports[kind] = str(path)
    return reports


def unique_slug(target: str, used: set[str]) -> str:
    """A folder name for a target's reports: its path with separators turned to ``__``, unique in this run."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", target.replace("/", "__")).strip("._") or "root"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug
