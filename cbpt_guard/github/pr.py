"""Pull request mode, end to end: find the checkpoints, gate them, write the files, publish, combine the exit code.

The order is chosen so that nothing hides the verdict: the reports and the step
summary are written whatever happens to the GitHub calls, the exit code comes
from the verdicts alone, and every publishing problem is listed in the summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cbpt_guard.errors import ExitCode, UsageError
from cbpt_guard.github import checkrun, summary
from cbpt_guard.github.client import Connection, PublishProblem, connect, problem_from_error
from cbpt_guard.github.discover import ChangedFile, checkpoints_from_changes, find_models
from cbpt_guard.github.gate import CheckFn, GateSettings, Progress, RunFiles, gate_targets, write_run_files
from cbpt_guard.github.outcome import CheckpointOutcome, combined_exit_code, overall_decision
from cbpt_guard.github.outputs import append_step_summary
from cbpt_guard.github.publish import PublishResult, PullRequestClient, PullRequestRef, publish
from cbpt_guard.github.trusted_policy import is_ready_name, trusted_policy

LISTING_FAILED = "cbpt-guard: inconclusive (the pull request's files could not be listed)"


@dataclasses.dataclass(frozen=True)
class PublishOptions:
    """Where the run's results go besides the files: the step summary, the PR comment, the check run."""

    step_summary: str | None = None
    comment: bool = True
    check_run: bool = True


@dataclasses.dataclass
class PullRequestRun:
    """Everything a pull-request gate run produced, for the CLI to print and turn into outputs."""

    targets: list[str]
    outcomes: list[CheckpointOutcome]
    exit_code: int
    headline: str
    decision: str
    """One word for the run: the outcomes' :func:`overall_decision`, or ``inconclusive``.

    ``inconclusive`` when the pull request's files could not be listed.
    """
    markdown: str
    files: RunFiles
    publish: PublishResult | None
    problems: list[PublishProblem]


def run_pull_request(settings: GateSettings, connection: Connection, pull_request: PullRequestRef | None, *,
                     models: Sequence[str] = (), changed: Sequence[ChangedFile] | None = None,
                     options: PublishOptions = PublishOptions(),
                     check_fn: CheckFn | None = None, progress: Progress | None = None) -> PullRequestRun:
    """Gate the checkpoints of a pull request (or the ``models`` patterns given) and publish the result.

    The checkpoints come from ``models`` (paths or globs) if given, else from
    ``changed`` (changed files known locally, as a pre-commit hook has them),
    else from the pull request's changed files, which needs ``pull_request``
    and a token; otherwise a :class:`UsageError` says so. Listing the files can
    fail (permissions, rate limit): the run is then inconclusive (exit 3), never
    a pass.
    """
    problems: list[PublishProblem] = []
    client = None
    if connection.token and pull_request is not None:
        client = PullRequestClient(connect(connection), pull_request)
    elif pull_request is not None:
        problems.append(PublishProblem("publishing to the pull request", None,
                                       "no GitHub token was given, so no comment or check run was posted; "
                                       "the verdict is in the step summary and the reports."))
    settings = dataclasses.replace(settings, policy=_trusted_policy(settings, client, pull_request))
    targets = _targets(settings, client, pull_request, models, changed, problems)
    outcomes = gate_targets(targets or [], settings, check_fn=check_fn, progress=progress)
    # Files that could not be listed: the gate does not know what to check, so it cannot pass.
    exit_code = int(ExitCode.INCONCLUSIVE) if targets is None else combined_exit_code(outcomes)
    title = LISTING_FAILED if targets is None else None

    render_md = _markdown_renderer()
    published = None
    if client is not None and (options.comment or options.check_run):
        comment = summary.compose(outcomes, render_md, problems, marker=True, title=title)
        check_run = {"conclusion": "failure" if targets is None else checkrun.conclusion(outcomes),
                     "title": title or summary.headline(outcomes),
                     "summary": summary.compose(outcomes, None, problems, title=title),
                     "text": summary.compose(outcomes, render_md, (), title=title),
                     "annotations": checkrun.annotations(outcomes, settings.root)}
        published = publish(client, comment_body=comment if options.comment else None,
                            check_run=check_run if options.check_run else None)
        problems.extend(published.problems)
    markdown = summary.compose(outcomes, render_md, problems, title=title)
    if options.step_summary:
        append_step_summary(options.step_summary, markdown)
    files = write_run_files(outcomes, markdown, settings.out_dir)
    decision = "inconclusive" if targets is None else overall_decision(outcomes)
    return PullRequestRun(targets or [], outcomes, exit_code, title or summary.headline(outcomes), decision,
                          markdown, files, published, problems)


def list_targets(settings: GateSettings, connection: Connection, pull_request: PullRequestRef | None, *,
                 models: Sequence[str] = (), changed: Sequence[ChangedFile] | None = None
                 ) -> tuple[list[str] | None, list[PublishProblem]]:
    """The checkpoints a run would gate, found as :func:`run_pull_request` finds them, and any listing problem.

    For runs that gate differently (the intake tier); None when the pull
    request's files could not be listed.
    """
    problems: list[PublishProblem] = []
    client = PullRequestClient(connect(connection), pull_request) if connection.token and pull_request else None
    return _targets(settings, client, pull_request, models, changed, problems), problems


def _targets(settings: GateSettings, client: PullRequestClient | None, pull_request: PullRequestRef | None,
             models: Sequence[str], changed: Sequence[ChangedFile] | None,
             problems: list[PublishProblem]) -> list[str] | None:
    """The checkpoints to gate, from the first source there is.

    None when the pull request's files could not be listed.
    """
    if models:
        return find_models(models, settings.root)
    if changed is not None:
        return checkpoints_from_changes(changed, settings.root)
    if client is not None:
        try:
            return checkpoints_from_changes(client.changed_files(), settings.root)
        except Exception as error:  # noqa: BLE001 - reported; the run is inconclusive
            problems.append(problem_from_error("listing the pull request's files", error))
            return None
    if pull_request is not None:
        raise UsageError("no GitHub token to list the pull request's changed files: give a token, or name the "
                         "models to check")
    raise UsageError("no models given and no pull request to list changed files from: name the models to check, "
                     "or run on a pull_request event")


def _trusted_policy(settings: GateSettings, client: PullRequestClient | None,
                    pull_request: PullRequestRef | None) -> str:
    """The policy to gate with, never taken from the pull request's own head (see :mod:`.trusted_policy`).

    The base commit comes from the event, or else from the API; when neither
    has it, a policy file needs a pinned digest.
    """
    base_sha = pull_request.base_sha if pull_request is not None else None
    if pull_request is not None and base_sha is None and client is not None and not is_ready_name(settings.policy):
        try:
            base_sha = client.base_sha()
        except Exception:  # noqa: BLE001 - without a base, trusted_policy refuses unless the policy is pinned
            base_sha = None
    return trusted_policy(settings.policy, root=settings.root, folder=Path(settings.out_dir) / "policy-source",
                          base_sha=base_sha, pinned_sha256=settings.policy_sha256,
                          under_review=pull_request is not None)


def _markdown_renderer():
    """The report renderer's Markdown for one Verdict."""
    from cbpt_guard.report import render

    return lambda verdict: render(verdict, "md")
