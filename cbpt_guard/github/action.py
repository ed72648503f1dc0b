"""The GitHub Action's inputs: read from the environment, which is all that configures the Action.

action.yml hands every input over as a ``CBPT_*`` environment variable and runs
``python -m cbpt_guard.cli.action``, whose run parses them here; the values are
read as data and never pass through a shell or a command line, so an input
like ``$(touch pwned)`` or ``--token=x`` is only ever
a strange path or policy name (a ``probes``, ``data`` or ``classes`` path that
does not exist is a usage error, exit 4). GitHub's own variables
(``GITHUB_REPOSITORY``, ``GITHUB_EVENT_PATH``, ``GITHUB_STEP_SUMMARY``,
``GITHUB_OUTPUT``) are read too. The token is read once into the connection and
then removed from the environment, before any untrusted file is parsed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cbpt_guard.device import DEVICE_CHOICES
from cbpt_guard.errors import UsageError
from cbpt_guard.github.client import DEFAULT_API_URL, Connection
from cbpt_guard.github.context import parse_repo, pull_request_from_event
from cbpt_guard.github.discover import split_patterns
from cbpt_guard.github.gate import GateSettings
from cbpt_guard.github.policy_overrides import PolicyOverrides
from cbpt_guard.github.pr import PublishOptions
from cbpt_guard.github.publish import PullRequestRef
from cbpt_guard.policy.schema import Mode

SECRET_VARIABLES = ("CBPT_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "ACTIONS_RUNTIME_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN")
"""Environment variables that may hold a credential; removed from the environment before any file is parsed."""
MODES = tuple(mode.value for mode in Mode)
"""The policy modes an input may override with; the policy schema's own enum, so the two cannot drift."""
DEVICES = DEVICE_CHOICES
SCANS = ("full", "intake")


@dataclasses.dataclass(frozen=True)
class ActionInputs:
    """The action's inputs, parsed and validated."""

    settings: GateSettings
    connection: Connection
    pull_request: PullRequestRef | None
    models: tuple[str, ...]
    options: PublishOptions
    device: str
    github_output: str | None
    scan: str = "full"
    """``full``: the whole check; ``intake``: only the safe-loading checks.

    See :mod:`cbpt_guard.github.intake_scan`.
    """


def inputs_from_env(env: Mapping[str, str]) -> ActionInputs:
    """Read the action's inputs from ``env``; raises :class:`UsageError` for a value it cannot use."""
    mode = env.get("CBPT_MODE", "").strip() or None
    if mode is not None and mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)} (or empty for the policy's own), not {mode!r}")
    device = env.get("CBPT_DEVICE", "").strip() or "auto"
    if device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    scan = env.get("CBPT_SCAN", "").strip() or "full"
    if scan not in SCANS:
        raise UsageError(f"scan must be one of {', '.join(SCANS)}, not {scan!r}")
    overrides = PolicyOverrides(mode=mode, purify=_tristate(env, "CBPT_PURIFY"), export=_tristate(env, "CBPT_EXPORT"))
    # The step runs in $GITHUB_WORKSPACE; relative paths keep the SARIF locations repository-relative.
    settings = GateSettings(policy=env.get("CBPT_POLICY", "").strip() or "strict", overrides=overrides,
                            seed=_int(env, "CBPT_SEED", 0),
                            out_dir=env.get("CBPT_OUTPUT_DIR", "").strip() or "cbpt-guard-report",
                            root=".", probes=_path(env, "CBPT_PROBES"), data=_path(env, "CBPT_DATA"),
                            classes=_path(env, "CBPT_CLASSES"),
                            policy_sha256=env.get("CBPT_POLICY_SHA256", "").strip().lower() or None)
    repo = env.get("GITHUB_REPOSITORY") or None
    pull_request = pull_request_from_event(env.get("GITHUB_EVENT_PATH"), parse_repo(repo) if repo else None)
    connection = Connection(token=env.get("CBPT_TOKEN") or None,
                            api_url=env.get("CBPT_API_URL", "").strip() or env.get("GITHUB_API_URL") or DEFAULT_API_URL)
    options = PublishOptions(step_summary=env.get("GITHUB_STEP_SUMMARY") or None,
                             comment=_flag(env, "CBPT_COMMENT", True), check_run=_flag(env, "CBPT_CHECK_RUN", True))
    return ActionInputs(settings, connection, pull_request, tuple(split_patterns(env.get("CBPT_MODEL", ""))),
                        options, device, env.get("GITHUB_OUTPUT") or None, scan)


def _path(env: Mapping[str, str], name: str) -> str | None:
    """An optional path input, relative to the workspace; None when empty.

    Only surrounding blanks are dropped (a YAML block adds a trailing newline);
    whether the path exists is checked by the gate, which names it in a usage error.
    """
    return env.get(name, "").strip() or None


def _tristate(env: Mapping[str, str], name: str) -> bool | None:
    """``true``/``false``, or None for empty or ``policy`` (keep the policy's own setting)."""
    value = env.get(name, "").strip().lower()
    if value in ("", "policy"):
        return None
    if value in ("true", "false"):
        return value == "true"
    raise UsageError(f"{name} must be true, false or policy, not {value!r}")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A true/false input with a default when empty."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("true", "false"):
        return value == "true"
    raise UsageError(f"{name} must be true or false, not {value!r}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole-number input with a default when empty."""
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.lstrip("-").isdigit():
        raise UsageError(f"{name} must be a whole number, not {value!r}")
    return int(value)
