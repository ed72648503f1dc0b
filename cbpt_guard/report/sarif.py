"""SARIF 2.1.0 for GitHub code scanning: one result per finding, located at the checkpoint's weights file.

One rule per kind of finding (:data:`cbpt_guard.report.findings.RULES`).
Results point at the weights file by a URI relative to the repository root:
``repo_root`` when given, else the Actions workspace (``$GITHUB_WORKSPACE``),
the git top-level above the file or the current directory, else the current
directory (:func:`default_roots`); an absolute ``file://`` URI only when asked
(``absolute=True``) or when the file lies outside all of them. GitHub code
scanning shows an alert on a file only by its repository-relative path. Results carry a ``partialFingerprints``
entry derived from the checkpoint digest and the rule (so an alert survives
re-runs and is the same alert for the same weights), and a waived finding
carries an ``external`` suppression whose justification is the waiver's reason.

GitHub rejects files over 10 MB or with more than 25,000 results per run; the
log is capped below both, most severe results kept, and ``run.properties``
says how many were left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

from cbpt_guard.report.findings import RULES, Finding, Rule, findings
from cbpt_guard.verdict import Verdict

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
MAX_RESULTS = 25_000
MAX_BYTES = 10 * 1024 * 1024 - 64 * 1024
"""GitHub's 10 MB upload limit, less a margin."""
FINGERPRINT_KEY = "cbptGuardFinding/v1"
_SECURITY_SEVERITY = {"CBPT001": "9.0", "CBPT002": "8.0", "CBPT003": "7.0", "CBPT004": "5.0"}


def sarif_text(message: str) -> str:
    """Plain SARIF message text: backslashes and square brackets escaped, so no viewer makes an embedded link."""
    return message.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def git_top_level(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``.git`` (a folder, or a file in a worktree), if any.

    Found by looking at the file system, not by running git: the report layer runs no programs.
    """
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def default_roots(file: Path) -> list[Path]:
    """The folders a location may be made relative to, first match wins.

    They are, in order: the Actions workspace, the git top-level above ``file``, the git
    top-level above the current directory, the current directory.
    """
    roots = []
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        roots.append(Path(workspace))
    cwd = Path.cwd()
    roots += [root for root in (git_top_level(file.parent), git_top_level(cwd)) if root is not None]
    return roots + [cwd]


def artifact_uri(path: str, repo_root: str | os.PathLike | None = None, *,
                 absolute: bool = False) -> tuple[str, bool]:
    """A URI for ``path`` and whether it is relative (to the repository root).

    A path inside ``repo_root`` (absolute, or relative to the current
    directory) becomes relative to it; without ``repo_root`` the first of
    :func:`default_roots` that holds it is used. With ``absolute`` the path
    becomes an absolute ``file://`` URI, as does an absolute path outside every
    root (a relative one is then kept as it is). Characters outside the URI
    alphabet are percent-encoded.
    """
    candidate = Path(path.replace("\\", "/"))
    try:
        resolved = (candidate if candidate.is_absolute() else Path.cwd() / candidate).resolve()
        roots = [Path(repo_root)] if repo_root is not None else default_roots(resolved)
        roots = [root.resolve() for root in roots]
    except (OSError, ValueError):  # a name the OS refuses (a NUL byte, too long): no root can hold it
        resolved, roots = (candidate if candidate.is_absolute() else Path.cwd() / candidate), []
    if absolute:
        return "file://" + quote(resolved.as_posix(), safe="/"), False
    for root in roots:
        try:
            return quote(resolved.relative_to(root).as_posix(), safe="/"), True
        except ValueError:
            continue
    if candidate.is_absolute():
        return "file://" + quote(candidate.as_posix(), safe="/"), False
    return quote(os.path.normpath(candidate).replace(os.sep, "/"), safe="/"), True


def _weights_path(verdict: Verdict) -> str:
    weights = [f.path for f in verdict.checkpoint.files if f.role == "weights"]
    return weights[0] if weights else verdict.checkpoint.path


def fingerprint(verdict: Verdict, finding: Finding) -> str:
    """A stable identity for a finding: SHA-256 of the checkpoint digest, the rule id and the finding's key."""
    digest = verdict.checkpoint.digest.strip().lower().removeprefix("sha256:")
    return hashlib.sha256(f"{digest}:{finding.rule.id}:{finding.key}".encode()).hexdigest()


def _rule(rule: Rule) -> dict:
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.short},
        "fullDescription": {"text": rule.full},
        "help": {"text": rule.full, "markdown": f"**{rule.short}**\n\n{rule.full}\n\nThe cbpt-guard HTML report "
                                                  "shows the evidence behind each result."},
        "defaultConfiguration": {"level": rule.level},
        "properties": {"tags": ["security", "machine-learning", "supply-chain"], "precision": "medium",
                       "security-severity": _SECURITY_SEVERITY[rule.id]},
    }


def _result(verdict: Verdict, finding: Finding, location: dict) -> dict:
    result = {
        "ruleId": finding.rule.id,
        "ruleIndex": RULES.index(finding.rule),
        "kind": "fail",
        "level": finding.level,
        "message": {"text": sarif_text(finding.message)},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(verdict, finding)},
        "properties": {"checkpointDigest": verdict.checkpoint.digest, "decision": verdict.decision.action},
    }
    if finding.waivers:
        result["suppressions"] = [
            {"kind": "external", "status": "accepted", "justification": sarif_text(w.reason),
             "properties": {"waiverId": w.id, "owner": w.owner, "expires": w.expires}}
            for w in finding.waivers]
    return result


def sarif_log(verdict: Verdict, *, repo_root: str | os.PathLike | None = None, absolute: bool = False,
              max_results: int = MAX_RESULTS) -> dict:
    """The SARIF log of ``verdict`` as a JSON-ready dict, with at most ``max_results`` results (most severe kept).

    Locations are repository-relative unless ``absolute`` (see :func:`artifact_uri`).
    """
    uri, relative = artifact_uri(_weights_path(verdict), repo_root, absolute=absolute)
    artifact = {"uri": uri, "uriBaseId": "%SRCROOT%"} if relative else {"uri": uri}
    location = {"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}}
    ordered = findings(verdict)  # most severe first, so a cap keeps what matters
    results = [_result(verdict, f, location) for f in ordered[:max_results]]
    failed = any(step.state == "failed" for step in verdict.steps)
    invocation = {"executionSuccessful": not failed, "exitCode": verdict.decision.exit_code}
    left_out = len(ordered) - len(results)
    if left_out:
        invocation["toolExecutionNotifications"] = [{"level": "warning", "message": {"text": (
            f"{left_out:,} of {len(ordered):,} results were left out to stay within GitHub's code scanning "
            "limits; the most severe are kept, and the HTML report and JSON verdict list them all.")}}]
    run = {
        "tool": {"driver": {"name": "cbpt-guard", "version": verdict.versions.cbpt_guard,
                            "rules": [_rule(r) for r in RULES]}},
        "invocations": [invocation],
        "results": results,
        "properties": {"decision": verdict.decision.action, "enforced": verdict.decision.enforced,
                       "mode": verdict.decision.mode, "checkpointDigest": verdict.checkpoint.digest,
                       "policySha256": verdict.policy.sha256, "resultsLeftOut": left_out},
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def _dump(log: dict) -> str:
    text = json.dumps(log, indent=2, ensure_ascii=False) + "\n"
    # '<', '>' and '&' only occur inside JSON strings; as \u escapes the file stays inert even if pasted into HTML.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_sarif(verdict: Verdict, *, repo_root: str | os.PathLike | None = None, absolute: bool = False,
                 max_bytes: int = MAX_BYTES) -> str:
    """The SARIF 2.1.0 log as JSON text, within GitHub's result-count and file-size limits."""
    limit = MAX_RESULTS
    while True:
        out = _dump(sarif_log(verdict, repo_root=repo_root, absolute=absolute, max_results=limit))
        if len(out.encode("utf-8")) <= max_bytes or limit == 0:
            return out
        limit //= 2
