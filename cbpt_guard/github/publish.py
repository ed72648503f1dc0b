"""The pull request's side of a gate run, through PyGithub: its changed files, one sticky comment, one check run.

Every call is wrapped: a failure becomes a :class:`PublishProblem` and the next
step still runs, so a read-only token can neither crash the gate nor hide its
verdict (the exit code is decided elsewhere, from the verdicts alone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cbpt_guard.github.checkrun import CHECK_NAME, batches
from cbpt_guard.github.client import PublishProblem, problem_from_error
from cbpt_guard.github.discover import ChangedFile
from cbpt_guard.github.summary import COMMENT_MARKER


@dataclasses.dataclass(frozen=True)
class PullRequestRef:
    """Which pull request: ``owner/name``, its number, the head commit the check run belongs to, and its base commit.

    The base commit is where a policy file is read from (see
    :mod:`cbpt_guard.github.trusted_policy`): the head is what is under review.
    """

    repo: str
    number: int
    head_sha: str | None = None
    base_sha: str | None = None


@dataclasses.dataclass
class PublishResult:
    """What publishing did: the comment (``created`` or ``updated``), the check run's id and calls, the problems."""

    comment: str | None = None
    comment_id: int | None = None
    check_run_id: int | None = None
    check_run_calls: int = 0
    problems: list[PublishProblem] = dataclasses.field(default_factory=list)


class PullRequestClient:
    """One pull request seen through a :class:`github.Github` client; each method may raise GithubException."""

    def __init__(self, gh, ref: PullRequestRef):
        self._repo = gh.get_repo(ref.repo)  # lazy client: no request until one is needed
        self._ref = ref
        self._pull = None

    @property
    def pull(self):
        """The pull request object, fetched once."""
        if self._pull is None:
            self._pull = self._repo.get_pull(self._ref.number)
        return self._pull

    def base_sha(self) -> str:
        """The commit the pull request would merge into (its base branch's head)."""
        return self.pull.base.sha

    def changed_files(self) -> list[ChangedFile]:
        """The files the pull request touches (GitHub lists at most 3,000)."""
        return [ChangedFile(f.filename, f.status) for f in self.pull.get_files()]

    def upsert_comment(self, body: str) -> tuple[str, int]:
        """Update the comment that starts with the marker, or create it; returns (``updated``/``created``, id).

        Only a comment whose body *starts* with the marker counts, so quoting
        the sticky comment in a reply does not hijack it; the newest one wins.
        """
        existing = [c for c in self.pull.get_issue_comments() if (c.body or "").startswith(COMMENT_MARKER)]
        if existing:
            comment = existing[-1]
            comment.edit(body)
            return "updated", comment.id
        comment = self.pull.create_issue_comment(body)
        return "created", comment.id

    def post_check_run(self, conclusion: str, title: str, summary: str, text: str,
                       annotations: Sequence[dict]) -> tuple[int, int]:
        """Create the check run with its conclusion and annotations, 50 per call; returns (id, calls made).

        With more than one batch the run is created in progress with the first,
        updated with each further batch (GitHub appends them), and completed
        with the last, so it is never shown finished with half its annotations.
        """
        head_sha = self._ref.head_sha or self.pull.head.sha
        chunks = list(batches(annotations))
        output = {"title": title[:255], "summary": summary, "text": text}
        now = dt.datetime.now(dt.timezone.utc)
        if len(chunks) == 1:
            run = self._repo.create_check_run(name=CHECK_NAME, head_sha=head_sha, status="completed",
                                              conclusion=conclusion, completed_at=now,
                                              output=output | {"annotations": chunks[0]})
            return run.id, 1
        run = self._repo.create_check_run(name=CHECK_NAME, head_sha=head_sha, status="in_progress",
                                          output=output | {"annotations": chunks[0]})
        for chunk in chunks[1:-1]:
            run.edit(output=output | {"annotations": chunk})
        run.edit(status="completed", conclusion=conclusion, completed_at=dt.datetime.now(dt.timezone.utc),
                 output=output | {"annotations": chunks[-1]})
        return run.id, len(chunks)


def publish(client: PullRequestClient, *, comment_body: str | None, check_run: dict | None) -> PublishResult:
    """Post or update the sticky comment and create the check run; failures become problems, not exceptions.

    ``check_run`` holds :meth:`PullRequestClient.post_check_run`'s keyword
    arguments; None (or no ``comment_body``) skips that part.
    """
    result = PublishResult()
    if comment_body is not None:
        try:
            result.comment, result.comment_id = client.upsert_comment(comment_body)
        except Exception as error:  # noqa: BLE001 - any API failure is reported, the gate goes on
            result.problems.append(problem_from_error("posting the pull request comment", error))
    if check_run is not None:
        try:
            result.check_run_id, result.check_run_calls = client.post_check_run(**check_run)
        except Exception as error:  # noqa: BLE001
            result.problems.append(problem_from_error("creating the check run", error))
    return result
