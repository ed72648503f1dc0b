"""A fake GitHub REST API on 127.0.0.1 for the PR-mode tests, and Verdicts to feed it.

:class:`FakeGitHub` answers the endpoints pull-request mode uses the way GitHub
does (JSON bodies, ``Link`` pagination, 404 for anything unknown, 422 for more
than 50 annotations in one call, 401 without a token), records every request,
and can be told to fail a route (403, 404, a rate limit) a number of times.
It serves under an ``/api/v3`` prefix, as GitHub Enterprise does, so the tests
also show that the API base URL is honoured.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cbpt_guard.verdict import (
    CheckpointInfo,
    DecisionInfo,
    DetectionInfo,
    FileDigest,
    PolicyInfo,
    StepInfo,
    Verdict,
    Versions,
)

PREFIX = "/api/v3"


@dataclasses.dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict
    body: object
    authorization: str | None


@dataclasses.dataclass
class Failure:
    """An injected failure: answer ``status`` to requests matching ``method`` and ``pattern``, ``times`` times."""

    method: str
    pattern: str
    status: int
    body: dict
    headers: dict
    times: int


class FakeGitHub:
    """A small stateful GitHub API: one repository, pull requests with files, issue comments, check runs."""

    def __init__(self, repo: str = "acme/models"):
        self.repo = repo
        self.pull_files: dict[int, list[dict]] = {}
        self.head_sha: dict[int, str] = {}
        self.comments: dict[int, list[dict]] = {}
        self.check_runs: list[dict] = []
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self._next_id = 1000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def host(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        """The base URL a client is given (an Enterprise-style ``/api/v3``)."""
        return self.host + PREFIX

    # --- set-up and inspection -----------------------------------------------------------------
    def add_pull(self, number: int, files: list[tuple[str, str]], head_sha: str = "a" * 40) -> None:
        """A pull request whose changed files are ``(filename, status)`` pairs."""
        self.pull_files[number] = [{"sha": "0" * 40, "filename": name, "status": status, "additions": 1,
                                    "deletions": 0, "changes": 1} for name, status in files]
        self.head_sha[number] = head_sha

    def add_comment(self, number: int, body: str, login: str = "someone") -> None:
        """A comment already on the pull request."""
        with self._lock:
            self.comments.setdefault(number, []).append(self._comment(number, body, login))

    def fail(self, method: str, pattern: str, status: int, message: str, headers: dict | None = None,
             times: int = 1_000_000) -> None:
        """Answer ``status`` to ``method`` requests whose path (after the prefix) matches ``pattern``."""
        self.failures.append(Failure(method, pattern, status, {"message": message,
                                                               "documentation_url": "https://docs.github.com"},
                                     headers or {}, times))

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        """The recorded requests with this method whose path matches ``pattern``."""
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    # --- the API -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: object, authorization: str | None):
        """Answer one request: (status, headers, JSON body)."""
        with self._lock:
            self.requests.append(Recorded(method, path, query, body, authorization))
            for failure in self.failures:
                if failure.method == method and failure.times > 0 and re.fullmatch(failure.pattern, path):
                    failure.times -= 1
                    return failure.status, failure.headers, failure.body
            if not authorization:
                return 401, {}, {"message": "Requires authentication"}
            return self._route(method, path, query, body)

    def _route(self, method, path, query, body):
        repo = re.escape(self.repo)
        routes = [
            ("GET", rf"/repos/{repo}", self._get_repo),
            ("GET", rf"/repos/{repo}/pulls/(\d+)", self._get_pull),
            ("GET", rf"/repos/{repo}/pulls/(\d+)/files", self._list_files),
            ("GET", rf"/repos/{repo}/issues/(\d+)/comments", self._list_comments),
            ("POST", rf"/repos/{repo}/issues/(\d+)/comments", self._create_comment),
            ("PATCH", rf"/repos/{repo}/issues/comments/(\d+)", self._update_comment),
            ("POST", rf"/repos/{repo}/check-runs", self._create_check_run),
            ("PATCH", rf"/repos/{repo}/check-runs/(\d+)", self._update_check_run),
        ]
        for route_method, pattern, answer in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return answer(query, body, *match.groups())
        return 404, {}, {"message": "Not Found"}

    def _url(self, path: str) -> str:
        return f"{self.api_url}/repos/{self.repo}{path}"

    def _get_repo(self, query, body):
        owner, name = self.repo.split("/")
        return 200, {}, {"id": 1, "name": name, "full_name": self.repo, "owner": {"login": owner},
                         "url": f"{self.api_url}/repos/{self.repo}"}

    def _get_pull(self, query, body, number):
        number = int(number)
        if number not in self.pull_files:
            return 404, {}, {"message": "Not Found"}
        return 200, {}, {"id": number, "number": number, "state": "open", "url": self._url(f"/pulls/{number}"),
                         "issue_url": self._url(f"/issues/{number}"), "head": {"sha": self.head_sha[number]},
                         "base": {"sha": "b" * 40}}

    def _list_files(self, query, body, number):
        if int(number) not in self.pull_files:
            return 404, {}, {"message": "Not Found"}
        return self._page(self._url(f"/pulls/{number}/files"), self.pull_files[int(number)], query)

    def _list_comments(self, query, body, number):
        return self._page(self._url(f"/issues/{number}/comments"), self.comments.get(int(number), []), query)

    def _create_comment(self, query, body, number):
        comment = self._comment(int(number), body["body"], "github-actions[bot]")
        self.comments.setdefault(int(number), []).append(comment)
        return 201, {}, comment

    def _update_comment(self, query, body, comment_id):
        for comment in (c for comments in self.comments.values() for c in comments):
            if comment["id"] == int(comment_id):
                comment["body"] = body["body"]
                return 200, {}, comment
        return 404, {}, {"message": "Not Found"}

    def _create_check_run(self, query, body):
        annotations = (body.get("output") or {}).get("annotations", [])
        if len(annotations) > 50:
            return 422, {}, {"message": "Only 50 annotations are allowed per request"}
        self._next_id += 1
        run = {"id": self._next_id, "name": body["name"], "head_sha": body["head_sha"],
               "status": body.get("status", "queued"), "conclusion": body.get("conclusion"),
               "url": self._url(f"/check-runs/{self._next_id}"), "output": dict(body.get("output") or {}),
               "annotations": list(annotations)}
        self.check_runs.append(run)
        return 201, {}, _public(run)

    def _update_check_run(self, query, body, run_id):
        run = next((r for r in self.check_runs if r["id"] == int(run_id)), None)
        if run is None:
            return 404, {}, {"message": "Not Found"}
        annotations = (body.get("output") or {}).get("annotations", [])
        if len(annotations) > 50:
            return 422, {}, {"message": "Only 50 annotations are allowed per request"}
        run["annotations"].extend(annotations)  # GitHub appends annotations on update
        for key in ("status", "conclusion"):
            if key in body:
                run[key] = body[key]
        if "output" in body:
            run["output"] = dict(body["output"])
        return 200, {}, _public(run)

    def _comment(self, number: int, body: str, login: str) -> dict:
        self._next_id += 1
        return {"id": self._next_id, "body": body, "user": {"login": login, "type": "Bot"},
                "url": self._url(f"/issues/comments/{self._next_id}"),
                "issue_url": self._url(f"/issues/{number}"),
                "html_url": f"{self.host}/{self.repo}/pull/{number}#issuecomment-{self._next_id}"}

    def _page(self, url: str, items: list, query: dict):
        per_page = int(query.get("per_page", ["30"])[0])
        page = int(query.get("page", ["1"])[0])
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            headers["Link"] = f'<{url}?per_page={per_page}&page={page + 1}>; rel="next"'
        return 200, headers, chunk


def _public(run: dict) -> dict:
    """A check run as the API returns it (without the fake's own bookkeeping)."""
    return {k: v for k, v in run.items() if k != "annotations"}


def _handler_for(fake: FakeGitHub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            parts = urlsplit(self.path)
            path = parts.path[len(PREFIX):] if parts.path.startswith(PREFIX) else "/__outside_prefix__" + parts.path
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, headers, answer = fake.handle(self.command, path, parse_qs(parts.query), body,
                                                  self.headers.get("Authorization"))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler


# --- Verdicts a fake check returns -------------------------------------------------------------

_EXIT = {"pass": 0, "purified": 0, "purify": 1, "block": 1, "inconclusive": 3}


def make_verdict(path: str, action: str = "pass", *, reasons: tuple[str, ...] | None = None,
                 mode: str = "enforce", score: float | None = None) -> Verdict:
    """A complete, plausible Verdict for ``path`` with the given decision, built by hand.

    In warn or dry-run mode the action is ``pass`` (exit 0) and ``action`` is
    what enforce would have done.
    """
    enforced = action
    if mode != "enforce":
        action = "pass"
    score = score if score is not None else (0.91 if enforced == "block" else 0.12)
    weights = f"{path}/open_clip_model.safetensors"
    return Verdict(
        evaluated_on="2026-01-15", seed=0, device="cpu",
        checkpoint=CheckpointInfo(path=path, digest="d" * 64, architecture="ViT-tiny", layout="open_clip-dir",
                                  parameter_count=1234, image_size=(32, 32), classes=("cat", "dog", "ship"),
                                  classes_source="cbpt_manifest.json", templates=("a photo of a {}.",),
                                  files=(FileDigest(path=f"{path}/open_clip_config.json", size=10, sha256="c" * 64,
                                                    kind="json", role="config"),
                                         FileDigest(path=weights, size=100, sha256="d" * 64, kind="safetensors",
                                                    role="weights"))),
        policy=PolicyInfo(name="strict", source="policies/strict.yaml", sha256="e" * 64, mode=mode, settings={}),
        versions=Versions(cbpt_guard="0.1.0", python="3.11.7"),
        detection=DetectionInfo(outcome="backdoor evidence found" if enforced == "block"
                                else "no evidence of a backdoor found",
                                score=score, threshold=0.5, suspected_target="ship" if enforced == "block" else None,
                                calibration="fixed threshold", families=(), anomaly_index=None, anomaly_suspect=None,
                                features={}, seed=0, budget={}),
        decision=DecisionInfo(action=action, enforced=enforced, mode=mode,
                              reasons=reasons if reasons is not None else (f"decision: {enforced}",),
                              fail_closed=False, exit_code=0 if mode != "enforce" else _EXIT[enforced]),
        steps=(StepInfo(name="detect", state="done"),),
    )


class FakeCheck:
    """A stand-in for :func:`cbpt_guard.check`: answers from a table of model path -> Verdict (or exception).

    Like the real check, it writes the Verdict's reports into ``out_dir``.
    """

    def __init__(self, answers: dict[str, object]):
        self.answers = answers
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, model, **kwargs):
        self.calls.append((str(model), kwargs))
        key = next((k for k in self.answers if str(model).endswith(k)), None)
        if key is None:
            raise AssertionError(f"fake check asked about an unexpected model {model!r}")
        answer = self.answers[key]
        if isinstance(answer, BaseException):
            raise answer
        if kwargs.get("out_dir") is not None:
            from cbpt_guard.report import write_reports

            write_reports(answer, kwargs["out_dir"], repo_root=kwargs.get("repo_root"))
        return answer

