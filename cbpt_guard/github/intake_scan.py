"""The Action's quick tier (``scan: intake``): only the safe-loading checks of ``cbpt-guard inspect``, per checkpoint.

Meant for every push: seconds per checkpoint instead of the minutes a full
check takes, while the full check runs on the pull request. What it answers is
narrower, and it says so: a checkpoint that passes intake loads without running
code, hashes and builds as its configuration says (``loadable``); whether it
carries a backdoor is not examined, so the run's decision is never ``pass``.
An unsafe file blocks (exit 1), an unscannable one is inconclusive (exit 3), as
``cbpt-guard inspect`` exits.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from cbpt_guard.errors import CbptError, ExitCode
from cbpt_guard.github.gate import GateSettings, Progress, check_inputs, unique_slug
from cbpt_guard.github.outcome import most_severe
from cbpt_guard.github.summary import md_text

InspectFn = Callable[..., object]
"""``inspect(path, *, classes_file) -> CheckpointReport``, as :func:`cbpt_guard.intake.inspect_checkpoint`."""
LOADABLE = "loadable"
"""The intake tier's word for a checkpoint that loads safely: not ``pass``, since no detection ran."""
NOT_EXAMINED = "backdoor detection not run (scan: intake); the full check decides whether the model is clean"


@dataclasses.dataclass(frozen=True)
class IntakeOutcome:
    """One checkpoint's intake result: the report file, or the error that stopped intake."""

    target: str
    report: str | None
    summary: str
    """What intake found, one line: the digest and size, or the error."""
    exit_code: int

    @property
    def decision(self) -> str:
        """``loadable``, ``block``, ``inconclusive`` or ``error``."""
        return {0: LOADABLE, 1: "block", 3: "inconclusive"}.get(self.exit_code, "error")


@dataclasses.dataclass(frozen=True)
class IntakeRun:
    """The intake tier's whole run, for the CLI to print and turn into step outputs."""

    targets: list[str]
    outcomes: list[IntakeOutcome]
    exit_code: int
    decision: str
    markdown: str
    summary_md: str


def default_inspect() -> InspectFn:
    """The real intake (imports torch only when called)."""
    from cbpt_guard.intake import inspect_checkpoint

    return inspect_checkpoint


def scan_intake(targets: Sequence[str], settings: GateSettings, *, inspect_fn: InspectFn | None = None,
                progress: Progress | None = None) -> IntakeRun:
    """Inspect each target (relative to ``settings.root``) and write ``intake.json`` per checkpoint and a summary.

    The data paths are checked as the full check checks them (a missing one is
    the whole run's usage error), so a push and its pull request fail alike.
    """
    inputs = check_inputs(settings)
    inspect = inspect_fn or default_inspect()
    out = Path(settings.out_dir)
    used: set[str] = set()
    outcomes = []
    for target in targets:
        if progress:
            progress(f"intake {target}")
        folder = out / unique_slug(target, used)
        folder.mkdir(parents=True, exist_ok=True)
        outcomes.append(_inspect_one(target, folder, settings, inputs["classes_file"], inspect))
    exit_code = most_severe(o.exit_code for o in outcomes)
    decision = "none" if not outcomes else next(o.decision for o in outcomes if o.exit_code == exit_code)
    markdown = compose(outcomes, decision)
    out.mkdir(parents=True, exist_ok=True)
    summary_md = out / "summary.md"
    summary_md.write_text(markdown, encoding="utf-8")
    return IntakeRun(list(targets), outcomes, exit_code, decision, markdown, str(summary_md))


def _inspect_one(target: str, folder: Path, settings: GateSettings, classes_file: str | None,
                 inspect: InspectFn) -> IntakeOutcome:
    try:
        report = inspect(str(Path(settings.root) / target), classes_file=classes_file)
    except CbptError as error:
        return IntakeOutcome(target, None, str(error), int(error.exit_code))
    except Exception as error:  # noqa: BLE001 - one crashing checkpoint must not hide the others
        return IntakeOutcome(target, None, f"internal error: {type(error).__name__}: {error}",
                             int(ExitCode.TOOL_ERROR))
    path = folder / "intake.json"
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    line = (f"loads safely: {report.architecture}, {report.parameter_count:,} parameters, "
            f"sha256 {report.checkpoint_sha256[:16]}")
    return IntakeOutcome(target, str(path), line, int(ExitCode.PASS))


def compose(outcomes: Sequence[IntakeOutcome], decision: str) -> str:
    """The step summary: a heading that says which tier ran, then one row per checkpoint."""
    lines = [f"## cbpt-guard intake scan: {decision}", "", f"_{NOT_EXAMINED}._", ""]
    if not outcomes:
        return "\n".join(lines + ["No checkpoint to check among the changed files.", ""])
    lines += ["| Checkpoint | Intake | Exit |", "|---|---|---|"]
    lines += [f"| `{md_text(o.target)}` | {o.decision}: {md_text(o.summary)} | {o.exit_code} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def outputs(run: IntakeRun) -> dict[str, str]:
    """The Action's step outputs for an intake run (no verdicts, reports or scores exist in this tier)."""
    return {"decision": run.decision, "exit-code": str(run.exit_code), "checkpoints": json.dumps(run.targets),
            "report-dir": str(Path(run.summary_md).parent), "summary": run.summary_md, "sarif": "",
            "html-reports": "", "verdicts": "", "purified-model": "", "metrics": "{}", "score": ""}
