"""Policies: the versioned YAML that says what the gate does with what it finds.

``load_policy`` / ``resolve_policy`` read a file safely and validate it against
:class:`Policy`; every problem raises :class:`PolicyError` (exit 4) naming the
file, the line and the key. Ready policies live in the repository's ``policies/``.
"""

from __future__ import annotations

from cbpt_guard.policy.load import (
    LoadedPolicy,
    load_policy,
    load_policy_text,
    ready_policy_names,
    resolve_policy,
)
from cbpt_guard.policy.schema import (
    BackdoorAction,
    DataTier,
    DummyScope,
    FailClosedAction,
    Mode,
    Policy,
    PolicyError,
    PolicyProblem,
    TriggerFamily,
    Waiver,
)

__all__ = [
    "BackdoorAction",
    "DataTier",
    "DummyScope",
    "FailClosedAction",
    "LoadedPolicy",
    "Mode",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "TriggerFamily",
    "Waiver",
    "load_policy",
    "load_policy_text",
    "ready_policy_names",
    "resolve_policy",
]
