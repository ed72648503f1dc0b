"""The result of gating one checkpoint, and how several results combine into one exit code."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from cbpt_guard.errors import ExitCode
from cbpt_guard.verdict import Verdict

# Which code a run over several checkpoints exits with: a definite block first, then a
# crash, then an inconclusive run, then a usage problem; a pass only when every one passed.
_SEVERITY = (ExitCode.BLOCKED, ExitCode.TOOL_ERROR, ExitCode.INCONCLUSIVE, ExitCode.USAGE, ExitCode.PASS)


@dataclasses.dataclass(frozen=True)
class CheckpointOutcome:
    """One checkpoint's result: its Verdict, or the error that stopped the check before one existed.

    ``target`` is the path as gated (relative to the repository root);
    ``out_dir`` is where its reports were written; ``reports`` maps a report
    format (json, html, md, sarif) to its file.
    """

    target: str
    out_dir: str
    verdict: Verdict | None = None
    error: str | None = None
    error_exit_code: int = int(ExitCode.TOOL_ERROR)
    reports: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The exit code this checkpoint alone would give."""
        return self.verdict.decision.exit_code if self.verdict is not None else self.error_exit_code

    @property
    def decision(self) -> str:
        """The gate's answer in words: the Verdict's action, or ``error``."""
        return self.verdict.decision.action if self.verdict is not None else "error"

    @property
    def enforced(self) -> str:
        """What enforce mode would do (differs from :attr:`decision` in warn and dry-run modes)."""
        return self.verdict.decision.enforced if self.verdict is not None else "error"


def combined_exit_code(outcomes: Sequence[CheckpointOutcome]) -> int:
    """The exit code of a run over ``outcomes``: the most severe one, 0 only if all passed (or none ran)."""
    return most_severe(outcome.exit_code for outcome in outcomes)


def most_severe(exit_codes: Iterable[int]) -> int:
    """The exit code of a run whose checkpoints gave ``exit_codes`` (0 for none)."""
    codes = set(exit_codes)
    for code in _SEVERITY:
        if int(code) in codes:
            return int(code)
    # An exit code outside the documented table is a bug somewhere: fail closed.
    return int(ExitCode.TOOL_ERROR) if codes else int(ExitCode.PASS)


def overall_decision(outcomes: Sequence[CheckpointOutcome]) -> str:
    """One word for the whole run: ``none`` when nothing was checked, else the decision of the worst outcome."""
    if not outcomes:
        return "none"
    code = combined_exit_code(outcomes)
    worst = [o for o in outcomes if o.exit_code == code]
    if code == int(ExitCode.PASS):
        # All passed; say "purified" if any pass rests on purification: the deployable artefact changed.
        actions = {o.decision for o in outcomes}
        return "purified" if "purified" in actions else sorted(actions)[0]
    return worst[0].decision if worst else "error"
