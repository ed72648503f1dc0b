"""What the check run says: its conclusion and its annotations, derived from the outcomes alone.

GitHub takes at most 50 annotations per create or update call (later calls
append), and annotations must point at a file of the repository: each one points
at the checkpoint's weights file (or its config), line 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cbpt_guard.github.outcome import CheckpointOutcome
from cbpt_guard.verdict import PURIFIED_ADVICE

CHECK_NAME = "cbpt-guard"
ANNOTATIONS_PER_CALL = 50
"""GitHub's limit on annotations in one check-run create or update request."""


def conclusion(outcomes: Sequence[CheckpointOutcome]) -> str:
    """The check run's conclusion: ``failure``, ``neutral`` or ``success``.

    ``failure`` if any checkpoint fails the gate; ``neutral`` if there was nothing to check, the policy
    only warned about something enforce would stop, or a pass rests on purification (what may be deployed
    is then the purified classifier, not the checkpoint in the pull request); else ``success``.
    """
    if not outcomes:
        return "neutral"
    if any(o.exit_code != 0 for o in outcomes):
        return "failure"
    if any(o.enforced in ("block", "inconclusive", "purify", "purified") for o in outcomes):
        return "neutral"
    return "success"


def annotations(outcomes: Sequence[CheckpointOutcome], root: str | os.PathLike[str] = ".") -> list[dict]:
    """The annotations of all outcomes, in order: each decision reason, unsafe finding and skipped required step."""
    found: list[dict] = []
    for outcome in outcomes:
        found.extend(annotations_for(outcome, root))
    return found


def annotations_for(outcome: CheckpointOutcome, root: str | os.PathLike[str] = ".") -> list[dict]:
    """One checkpoint's annotations (GitHub's ``output.annotations`` items)."""
    verdict = outcome.verdict
    path = annotation_path(outcome, root)
    if verdict is None:
        return [_annotation(path, "failure", "cbpt-guard: the check failed", outcome.error or "unknown error")]
    failing = outcome.exit_code != 0
    level = "failure" if failing else ("warning" if verdict.decision.enforced != "pass" else "notice")
    title = f"cbpt-guard: {verdict.decision.action}"
    items = []
    if verdict.decision.action == "purified":
        items.append(_annotation(path, level, "cbpt-guard: deploy the purified classifier",
                                 f"purified: {PURIFIED_ADVICE}"))
    items += [_annotation(path, level, title, reason) for reason in verdict.decision.reasons]
    items += [_annotation(path, "failure", "cbpt-guard: unsafe serialisation", finding)
              for finding in verdict.checkpoint.unsafe_findings]
    items += [_annotation(path, "warning", "cbpt-guard: required step skipped", f"{step.name}: {step.reason}")
              for step in verdict.steps if step.required and step.state in ("skipped", "failed")]
    return items


def annotation_path(outcome: CheckpointOutcome, root: str | os.PathLike[str] = ".") -> str:
    """The repository file an outcome's annotations point at: the weights file, else a config, else the target."""
    target = Path(outcome.target)
    verdict = outcome.verdict
    if verdict is not None:
        by_role = {f.role: f.path for f in reversed(verdict.checkpoint.files)}
        chosen = by_role.get("weights") or by_role.get("config")
        if chosen:
            return _repo_relative(chosen, target, root)
    return target.as_posix()


def batches(items: Sequence[dict], size: int = ANNOTATIONS_PER_CALL) -> Iterator[list[dict]]:
    """``items`` in consecutive lists of at most ``size``; one empty list when there are none."""
    if not items:
        yield []
        return
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _annotation(path: str, level: str, title: str, message: str) -> dict:
    # GitHub caps title at 255 and message at 64 KiB characters.
    return {"path": path, "start_line": 1, "end_line": 1, "annotation_level": level,
            "title": title[:255], "message": message[:4000]}


def _repo_relative(file_path: str, target: Path, root: str | os.PathLike[str]) -> str:
    """A file of the checkpoint as a repository-relative POSIX path (intake may record it absolute or bare)."""
    candidate = Path(file_path)
    base = Path(root).resolve()
    if candidate.is_absolute():
        try:
            return candidate.resolve().relative_to(base).as_posix()
        except ValueError:
            return target.as_posix()
    if len(candidate.parts) == 1:
        # A bare file name: it lives in the target folder (or is the target itself).
        return (target / candidate).as_posix() if not target.name == candidate.name else target.as_posix()
    return candidate.as_posix()
