"""Gate an MLflow model-registry version with cbpt-guard before it is promoted.

The registry hook in four steps: download the version's artifacts through the
MLflow client, run ``cbpt_guard.check`` on the checkpoint among them, record the
decision on the version as tags, and move the alias (``champion`` by default) to
the version only if the gate passed it as it is. A version that fails is never promoted, and
if the alias already pointed at it (a re-check under a stricter policy) the alias
is taken away.

    python examples/mlflow_gate.py --tracking-uri http://mlflow:5000 --name clip-prod --version 7

Exit code: the gate's (0 pass, 1 blocked, 2 tool error, 3 inconclusive, 4 usage),
so a CI job or a registry webhook can stop on it. Needs ``pip install mlflow``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

TAG_PREFIX = "cbpt_guard."
CONFIG_NAMES = ("open_clip_config.json", "config.json")


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What the gate decided for one model version, and whether the version was promoted."""

    name: str
    version: str
    decision: str
    exit_code: int
    promoted: bool
    reasons: tuple[str, ...]
    report_dir: str


def find_checkpoint(folder: Path) -> Path:
    """The model folder inside downloaded artifacts: the shallowest one holding a model config, else ``folder``."""
    configs = sorted((p for name in CONFIG_NAMES for p in folder.rglob(name)), key=lambda p: (len(p.parts), str(p)))
    return configs[0].parent if configs else folder


def gate_version(client, name: str, version: str, *, tracking_uri: str, policy: str = "strict",
                 alias: str = "champion", stage: str | None = None, work_dir: str | Path | None = None,
                 check: Callable | None = None) -> GateResult:
    """Check model version ``name``/``version`` and promote it (alias, optionally stage) only if it passes.

    ``client`` is an :class:`mlflow.MlflowClient`; ``check`` defaults to
    :func:`cbpt_guard.check` (injectable for tests). Tags written on the version:
    ``cbpt_guard.decision``, ``cbpt_guard.exit_code``, ``cbpt_guard.checkpoint_sha256``,
    ``cbpt_guard.policy`` and ``cbpt_guard.policy_sha256``.
    """
    import mlflow.artifacts

    if check is None:
        from cbpt_guard import check
    work = Path(work_dir or tempfile.mkdtemp(prefix="cbpt-guard-mlflow-"))
    source = client.get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(work / "artifacts"),
                                                tracking_uri=tracking_uri)
    report_dir = work / "report"
    verdict = check(str(find_checkpoint(Path(local))), policy=policy, out_dir=str(report_dir))
    decision, code = verdict.decision.action, verdict.decision.exit_code
    tags = {"decision": decision, "exit_code": str(code), "checkpoint_sha256": verdict.checkpoint.digest,
            "policy": verdict.policy.name, "policy_sha256": verdict.policy.sha256}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, TAG_PREFIX + key, value)
    # Only a plain pass promotes the version itself: after "purify" (exit 0 too) what passed
    # is the purified classifier in the reports folder, not these weights.
    promoted = code == 0 and decision == "pass"
    if promoted:
        client.set_registered_model_alias(name, alias, version)
        if stage:
            client.transition_model_version_stage(name, version, stage)
    else:
        _withdraw_alias(client, name, alias, version)
    return GateResult(name, str(version), decision, code, promoted, tuple(verdict.decision.reasons), str(report_dir))


def _withdraw_alias(client, name: str, alias: str, version: str) -> None:
    """Remove ``alias`` if it points at ``version``: a version that fails the gate must not stay deployed."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return  # the alias is not set
    if str(current.version) == str(version):
        client.delete_registered_model_alias(name, alias)


def main(argv: list[str] | None = None) -> int:
    """Command line: gate one version, print the outcome, return the gate's exit code."""
    parser = argparse.ArgumentParser(description="Gate an MLflow model version with cbpt-guard.")
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking (and registry) server URI.")
    parser.add_argument("--name", required=True, help="Registered model name.")
    parser.add_argument("--version", required=True, help="Model version to gate.")
    parser.add_argument("--policy", default="strict", help="cbpt-guard policy name or file (default: strict).")
    parser.add_argument("--alias", default="champion", help="Alias given to a version that passes.")
    parser.add_argument("--stage", help="Also transition a passing version to this stage (deprecated in MLflow).")
    parser.add_argument("--work-dir", help="Where to download the artifacts and write the reports.")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    from cbpt_guard.errors import CbptError

    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    try:
        result = gate_version(client, args.name, args.version, tracking_uri=args.tracking_uri, policy=args.policy,
                              alias=args.alias, stage=args.stage, work_dir=args.work_dir)
    except CbptError as error:  # a usage error (a bad policy): nothing was decided, nothing is promoted
        print(f"cbpt-guard: error: {error}", file=sys.stderr)
        return int(error.exit_code)
    action = f"promoted to alias {args.alias!r}" if result.promoted else "not promoted"
    print(f"{result.name} version {result.version}: {result.decision} (exit {result.exit_code}), {action}")
    for reason in result.reasons:
        print(f"  - {reason}")
    print(f"reports: {result.report_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
