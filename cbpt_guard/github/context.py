"""The pull request a workflow runs for, read from the event payload GitHub Actions writes to disk."""

from __future__ import annotations

import json

from cbpt_guard.errors import UsageError
from cbpt_guard.github.publish import PullRequestRef


def pull_request_from_event(event_path: str | None, repo: str | None) -> PullRequestRef | None:
    """The pull request of the event at ``event_path`` (``$GITHUB_EVENT_PATH``), or None for other events.

    The head SHA is the pull request's head commit, which is where a check run
    belongs (``$GITHUB_SHA`` is the test merge commit on pull_request events);
    the base SHA is the commit a policy file is read from.
    """
    if not event_path or not repo:
        return None
    try:
        with open(event_path, encoding="utf-8") as handle:
            event = json.load(handle)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the GitHub event file {event_path!r}: {error}") from None
    pull = event.get("pull_request") if isinstance(event, dict) else None
    if not isinstance(pull, dict) or not isinstance(pull.get("number"), int):
        return None
    return PullRequestRef(repo=repo, number=pull["number"], head_sha=_sha(pull, "head"), base_sha=_sha(pull, "base"))


def _sha(pull: dict, side: str) -> str | None:
    """``pull[side]["sha"]`` when it is a string, else None."""
    ref = pull.get(side) if isinstance(pull.get(side), dict) else {}
    return ref.get("sha") if isinstance(ref.get("sha"), str) else None


def parse_repo(text: str) -> str:
    """Validate ``owner/name``; raises :class:`UsageError` otherwise."""
    owner, _, name = text.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not owner or not name or "/" in name or not set(owner + name) <= allowed:
        raise UsageError(f"not a repository name of the form owner/name: {text!r}")
    return text
