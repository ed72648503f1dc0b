"""The Markdown a pull request shows: one table over all checkpoints, then each checkpoint's own summary.

The per-checkpoint text is the report renderer's Markdown (the same Verdict the
HTML and SARIF come from); this module only adds the table, the hidden marker that
finds the sticky comment again, and a size cap. Paths and error messages come from
the pull request, so they are escaped before they reach the Markdown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cbpt_guard.figures import score_text
from cbpt_guard.github.client import PublishProblem
from cbpt_guard.github.outcome import CheckpointOutcome, combined_exit_code, overall_decision

COMMENT_MARKER = "<!-- cbpt-guard:pr-summary -->"
"""Hidden first line of the sticky comment; the comment is found again by it."""
MAX_COMMENT_CHARS = 65_000
"""GitHub refuses comment and check-run text over 65,536 characters; keep a margin."""

_HEADLINES = {
    "none": "no checkpoints changed",
    "pass": "no evidence of a backdoor found",
    "purified": "purified: deploy the purified classifier, not the original",
    "purify": "purification needed",
    "block": "blocked",
    "inconclusive": "inconclusive",
    "error": "the check failed",
}


def md_text(text: object, limit: int = 1000) -> str:
    """Untrusted text made inert in Markdown, on one line: the report renderer's escaping.

    HTML and Markdown punctuation (links, emphasis, table pipes) are escaped,
    and ``@``/``#`` are broken with a zero-width space, so a path or an error
    message can neither link nor mention (notify) anyone nor reference an issue.
    """
    from cbpt_guard.report.markdown import escape_markdown

    return escape_markdown(text, limit)


def headline(outcomes: Sequence[CheckpointOutcome]) -> str:
    """One line for the whole run, e.g. ``cbpt-guard: blocked (1 of 2 checkpoints)``."""
    decision = overall_decision(outcomes)
    words = _HEADLINES.get(decision, decision)
    if not outcomes:
        return f"cbpt-guard: {words}"
    code = combined_exit_code(outcomes)
    if code:
        count = sum(1 for o in outcomes if o.exit_code == code)
    else:  # all passed: count the ones the headline names (the purified ones, when there are any)
        count = sum(1 for o in outcomes if o.decision == decision) if decision == "purified" else len(outcomes)
    noun = "checkpoint" if len(outcomes) == 1 else "checkpoints"
    return f"cbpt-guard: {words} ({count} of {len(outcomes)} {noun})"


def table(outcomes: Sequence[CheckpointOutcome]) -> str:
    """The overview table: checkpoint, decision (and what enforce would do), score, exit code."""
    rows = ["| Checkpoint | Decision | Score | Exit |", "|---|---|---|---|"]
    for outcome in outcomes:
        verdict = outcome.verdict
        decision = outcome.decision
        if verdict is not None and verdict.decision.enforced != verdict.decision.action:
            decision += f" ({verdict.decision.mode}; enforce would {verdict.decision.enforced})"
        score = "n/a"
        if verdict is not None and verdict.detection is not None:
            score = f"{score_text(verdict.detection.score)} / {score_text(verdict.detection.threshold)}"
        rows.append(f"| {md_text(outcome.target)} | {md_text(decision)} | {score} | {outcome.exit_code} |")
    return "\n".join(rows)


def compose(outcomes: Sequence[CheckpointOutcome], render_md: Callable[[object], str] | None,
            problems: Sequence[PublishProblem] = (), *, marker: bool = False, title: str | None = None,
            limit: int = MAX_COMMENT_CHARS) -> str:
    """The whole Markdown: headline, table, notes on publishing problems, and each checkpoint's details.

    ``render_md`` renders one Verdict to Markdown (the report renderer); None
    leaves the per-checkpoint details out; ``title`` replaces the headline. With
    ``marker`` the hidden sticky-comment marker leads the text. Details that do
    not fit under ``limit`` are cut, with a note pointing at the full reports.
    """
    head = [COMMENT_MARKER] if marker else []
    head += [f"## {title or headline(outcomes)}", ""]  # the tool's own words, no untrusted text
    if outcomes:
        head += [table(outcomes), ""]
    for problem in problems:
        head.append(f"> **Note:** {md_text(str(problem))}")
    if problems:
        head.append("")
    text = "\n".join(head)
    for outcome in outcomes if render_md is not None else ():
        section = _details(outcome, render_md)
        if len(text) + len(section) + 200 > limit:
            text += ("\n_Details of the remaining checkpoints are left out to stay within GitHub's size limit; "
                     "see the HTML reports in the workflow's artifacts._\n")
            break
        text += section
    return text[:limit]


def _details(outcome: CheckpointOutcome, render_md: Callable[[object], str]) -> str:
    """One checkpoint's collapsible section: the rendered Verdict, or the error."""
    if outcome.verdict is not None:
        body = render_md(outcome.verdict).strip()
    else:
        body = f"The check stopped before a verdict: {md_text(outcome.error or 'unknown error')}"
    summary = f"{md_text(outcome.target)}: {md_text(outcome.decision)}"
    return f"\n<details><summary>{summary}</summary>\n\n{body}\n\n</details>\n"
