"""Gate an MLflow model-registry version with cbpt-guard before it is promoted.

The registry hook in four steps: download the version's artifacts through the
MLflow client, run ``cbpt_guard.check`` on the checkpoint among them, record the
decision on the version as tags, and move the alias (``champion`` by default):

- ``pass`` (no evidence of a backdoor): the alias moves to the version itself;
- ``purified`` (backdoor evidence, purified and verified): the original weights
  are backdoored and are never promoted. The purified classifier (its ONNX
  export, its prompts and the verdict) is registered as a new version of the
  same model, tagged with the source version and the source checkpoint's
  SHA-256, and the alias moves to that new version;
- anything else: nothing is promoted, and if the alias pointed at the version
  (a re-check under a stricter policy) the alias is taken away.

    python examples/mlflow_gate.py --tracking-uri http://mlflow:5000 --name clip-prod --version 7

Exit code: the gate's (0 pass or purified, 1 blocked, 2 tool error, 3 inconclusive, 4 usage),
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
PURIFIED_ARTIFACT_PATH = "purified-classifier"
"""Where the purified classifier's files sit in the run that registers it."""
FALLBACK_EXPERIMENT = "cbpt-guard"
"""The experiment that holds the registering run when the checked version has no run of its own."""


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What the gate decided for one model version, and which version (if any) the alias now points at.

    ``promoted`` says the alias was moved; ``promoted_version`` is where to: the
    checked version after a ``pass``, the newly registered purified classifier
    (``purified_version``) after a ``purified`` decision, never the original
    weights of a backdoored version.
    """

    name: str
    version: str
    decision: str
    exit_code: int
    promoted: bool
    reasons: tuple[str, ...]
    report_dir: str
    promoted_version: str | None = None
    purified_version: str | None = None


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
    ``cbpt_guard.policy`` and ``cbpt_guard.policy_sha256`` (and ``cbpt_guard.purified_version``
    when its purified classifier was registered, see :func:`register_purified`).
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
    # Only a plain pass promotes the version itself. After "purified" (exit 0 too) these weights are
    # backdoored: what passed is the purified classifier, registered as a version of its own.
    target = purified = None
    if code == 0 and decision == "pass":
        target = str(version)
    elif code == 0 and decision == "purified":
        purified = register_purified(client, name, str(version), verdict, report_dir)
        client.set_model_version_tag(name, version, TAG_PREFIX + "purified_version", purified)
        target = purified if _deployable(verdict, report_dir) else None
    if target != str(version):  # a version that did not pass as it is never keeps the alias
        _withdraw_alias(client, name, alias, str(version))
    if target is not None:
        client.set_registered_model_alias(name, alias, target)
        if stage:
            client.transition_model_version_stage(name, target, stage)
    return GateResult(name, str(version), decision, code, target is not None, tuple(verdict.decision.reasons),
                      str(report_dir), promoted_version=target, purified_version=purified)


def _deployable(verdict, report_dir: Path) -> bool:
    """Whether the purified classifier was exported to ONNX, its parity checked, and the file is there."""
    export = verdict.export
    return (export is not None and export.purified and export.passed and bool(export.path)
            and (report_dir / export.path).is_file())


def register_purified(client, name: str, version: str, verdict, report_dir: Path) -> str:
    """Register the purified classifier of ``name``/``version`` as a new version of ``name``; return it.

    The registering run holds the ONNX export, the purified prompts and the
    verdict under ``purified-classifier/``. The new version is tagged with
    the source version, the source checkpoint's SHA-256 and the digests of
    what it holds, so the deployed artefact can be traced to the weights it
    was purified from. The run goes in the experiment of the source version's
    own run (else in ``cbpt-guard``).
    """
    files = [report_dir / verdict.artefacts[role] for role in ("onnx", "prompts", "verdict")
             if role in verdict.artefacts and (report_dir / verdict.artefacts[role]).is_file()]
    source_run = client.get_model_version(name, version).run_id
    if source_run:
        experiment_id = client.get_run(source_run).info.experiment_id
    else:
        existing = client.get_experiment_by_name(FALLBACK_EXPERIMENT)
        experiment_id = existing.experiment_id if existing else client.create_experiment(FALLBACK_EXPERIMENT)
    tags = {TAG_PREFIX + "decision": "purified", TAG_PREFIX + "source_version": str(version),
            TAG_PREFIX + "source_checkpoint_sha256": verdict.checkpoint.digest,
            TAG_PREFIX + "policy": verdict.policy.name, TAG_PREFIX + "policy_sha256": verdict.policy.sha256}
    if verdict.export is not None and verdict.export.sha256:
        tags[TAG_PREFIX + "onnx_sha256"] = verdict.export.sha256
    if verdict.purification is not None and verdict.purification.prompts_sha256:
        tags[TAG_PREFIX + "prompts_sha256"] = verdict.purification.prompts_sha256
    run = client.create_run(experiment_id, tags=tags, run_name=f"{name}-v{version}-purified")
    for path in files:
        client.log_artifact(run.info.run_id, str(path), PURIFIED_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    created = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/{PURIFIED_ARTIFACT_PATH}", run_id=run.info.run_id, tags=tags,
        description=f"Purified classifier of version {version} (checkpoint sha256 {verdict.checkpoint.digest}): "
                    "deploy this, not the original weights.")
    return str(created.version)


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
    if result.promoted and result.promoted_version != result.version:
        action = (f"its purified classifier registered as version {result.promoted_version} and promoted to alias "
                  f"{args.alias!r}; the original weights are not promoted")
    elif result.promoted:
        action = f"promoted to alias {args.alias!r}"
    elif result.purified_version:
        action = (f"its purified classifier registered as version {result.purified_version}, not promoted (no "
                  "ONNX export with a passing parity check)")
    else:
        action = "not promoted"
    print(f"{result.name} version {result.version}: {result.decision} (exit {result.exit_code}), {action}")
    for reason in result.reasons:
        print(f"  - {reason}")
    print(f"reports: {result.report_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
