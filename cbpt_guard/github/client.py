"""The PyGithub connection, and GitHub API failures turned into data instead of crashes.

The gate's verdict must survive any trouble with the API (no token, a read-only
token on a fork's pull request, a rate limit, an Enterprise server that is down):
each failed call becomes a :class:`PublishProblem` with a message that says what
to fix, and the caller carries on.
"""

from __future__ import annotations

import dataclasses

DEFAULT_API_URL = "https://api.github.com"


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where and how to reach the GitHub REST API.

    ``retries`` applies to connection errors and 5xx answers of idempotent
    calls only (never a POST, which could post a comment twice; never a rate
    limit, which would stall the gate until the limit resets).
    ``write_interval_s`` spaces writes as GitHub's secondary rate limits ask;
    tests set both to 0.
    """

    token: str | None
    api_url: str = DEFAULT_API_URL
    retries: int = 2
    write_interval_s: float = 1.0
    timeout_s: int = 30


@dataclasses.dataclass(frozen=True)
class PublishProblem:
    """A GitHub call that did not go through: which one, the HTTP status (if any), and what to do about it."""

    action: str
    status: int | None
    message: str

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.action} failed{status}: {self.message}"


def connect(connection: Connection):
    """A :class:`github.Github` client for ``connection`` (token auth, the given API base URL).

    Raises ValueError without a token: callers check for one first and record a
    problem instead, so that a missing token never hides the verdict.
    """
    import github
    from urllib3.util.retry import Retry

    if not connection.token:
        raise ValueError("no GitHub token")
    retry = None
    if connection.retries > 0:
        retry = Retry(total=connection.retries, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504),
                      allowed_methods=frozenset({"GET", "PATCH"}), raise_on_status=False)
    return github.Github(base_url=connection.api_url.rstrip("/"), auth=github.Auth.Token(connection.token),
                         retry=retry, timeout=connection.timeout_s, per_page=100, user_agent="cbpt-guard",
                         seconds_between_requests=None, lazy=True,
                         seconds_between_writes=connection.write_interval_s or None)


def problem_from_error(action: str, error: Exception) -> PublishProblem:
    """Describe a failed GitHub call for a CI log: what happened and the likely fix."""
    from github import GithubException

    if not isinstance(error, GithubException):
        # Network trouble (DNS, refused connection, TLS): no status, say where we tried.
        return PublishProblem(action, None, f"{type(error).__name__}: {error}")
    status = error.status
    headers = {k.lower(): v for k, v in (error.headers or {}).items()}
    detail = _api_message(error)
    if status in (403, 429) and (headers.get("x-ratelimit-remaining") == "0" or "rate limit" in detail.lower()):
        reset = headers.get("x-ratelimit-reset")
        when = f"; the limit resets at epoch {reset}" if reset else ""
        return PublishProblem(action, status, f"GitHub API rate limit exceeded{when}. The verdict above stands; "
                                              "re-run the job later to publish it.")
    if status == 401:
        return PublishProblem(action, status, "the token was refused (bad or expired credentials).")
    if status == 403:
        return PublishProblem(action, status, f"the token lacks permission ({detail}). The workflow needs "
                                              "`permissions: pull-requests: write, checks: write`; on a pull "
                                              "request from a fork the token is read-only.")
    if status == 404:
        return PublishProblem(action, status, f"not found ({detail}): check the repository, the pull request "
                                              "number and the API URL, or the token cannot see the repository.")
    return PublishProblem(action, status, detail or "unexpected answer from the GitHub API")


def _api_message(error) -> str:
    """The ``message`` GitHub put in an error body, if it sent one."""
    data = error.data if isinstance(error.data, dict) else {}
    message = data.get("message") or error.message or ""
    return str(message)[:300]
