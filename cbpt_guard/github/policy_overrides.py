"""A policy with a workflow's overrides applied (mode, purify, export), written as a file of its own.

The check takes a policy name or file, and the report records the policy's digest.
So an override is not applied behind the report's back: the overridden policy is
written next to the reports, validated like any policy, and its own digest is the
one recorded. A header comment in the file names the original and the overrides.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class PolicyOverrides:
    """Overrides from a workflow; None leaves the policy's own setting."""

    mode: str | None = None
    """enforce, warn or dry-run."""
    purify: bool | None = None
    """False: backdoor evidence blocks instead of purifying; True: it purifies."""
    export: bool | None = None
    """Whether the purified classifier is exported to ONNX."""

    @property
    def empty(self) -> bool:
        """Whether no override is set."""
        return self.mode is None and self.purify is None and self.export is None


def effective_policy(policy: str, overrides: PolicyOverrides, folder: str | Path) -> str:
    """The policy argument to check with: ``policy`` itself, or the path of an overridden copy in ``folder``.

    Raises :class:`cbpt_guard.policy.schema.PolicyError` (exit 4) when the
    policy, or the overridden copy, is not valid.
    """
    if overrides.empty:
        return policy
    from cbpt_guard.policy.load import load_policy, resolve_policy

    loaded = resolve_policy(policy)
    data = loaded.policy.model_dump(mode="json", exclude_none=True)
    calibration = loaded.calibration_path
    target = Path(folder) / f"{loaded.name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    if calibration is not None:
        # A policy may name only a calibration in its own folder: the copy takes one along.
        local = target.with_name(f"{loaded.name}.calibration.json")
        shutil.copyfile(calibration, local)
        data["detection"]["calibration"] = local.name
    changed = []
    if overrides.mode is not None:
        data["mode"] = overrides.mode
        changed.append(f"mode={overrides.mode}")
    if overrides.purify is not None:
        data.setdefault("evidence", {})["on_backdoor"] = "purify" if overrides.purify else "block"
        changed.append(f"purify={str(overrides.purify).lower()}")
    if overrides.export is not None:
        data.setdefault("export", {})["enabled"] = overrides.export
        changed.append(f"export={str(overrides.export).lower()}")
    header = (f"# Derived by cbpt-guard from {loaded.source} (sha256 {loaded.sha256})\n"
              f"# with the workflow's overrides: {', '.join(changed)}\n")
    target.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_policy(target)  # validate the copy exactly as the check will read it
    return str(target)
