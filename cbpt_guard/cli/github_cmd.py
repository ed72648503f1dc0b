"""``cbpt-guard github pr`` and ``cbpt-guard github changed``: the gate in pull requests and pre-commit hooks.

Thin commands over :mod:`cbpt_guard.github`: they read flags (or, for the
Action, environment variables), run the gate, print the outcome, write the
Actions step outputs and exit with the combined code. Publishing problems are
printed as warnings and never change the exit code.
"""

from __future__ import annotations

import json
import os

import click

from cbpt_guard.cli.progress import progress_printer
from cbpt_guard.cli.terminal import guarded_output, one_line, workflow_command
from cbpt_guard.errors import CbptError, ExitCode, UsageError
from cbpt_guard.github.action import DEVICES as _DEVICES, MODES as _MODES


def _plain(text: object) -> str:
    """Untrusted text on one line, blanks collapsed; the terminal guard neutralises what is left of it."""
    return one_line(" ".join(str(text).split()))


def gate_options(command):
    """The flags shared by ``pr`` and ``changed``: policy, overrides, data, device, seed, output folder.

    The data paths are plain strings here, not ``click.Path(exists=True)``: the
    gate checks them and a missing one is a one-line usage error (exit 4), the
    same in the Action as on the command line.
    """
    options = [
        click.option("--policy", default="strict", show_default=True, help="Ready policy name or policy file."),
        click.option("--policy-sha256", metavar="DIGEST",
                     help="Refuse the policy unless its file has this SHA-256 (lets a pull request be gated by a "
                          "policy file without a base commit)."),
        click.option("--mode", type=click.Choice(_MODES), help="Override the policy's mode."),
        click.option("--purify/--no-purify", default=None,
                     help="Override what backdoor evidence leads to (purify, or block)."),
        click.option("--export/--no-export", default=None, help="Override whether the purified model is exported."),
        click.option("--probes", metavar="DIR",
                     help="Unlabelled probe images for every checkpoint (the unlabelled tier), relative to the "
                          "repository root."),
        click.option("--data", metavar="DIR",
                     help="Labelled few-shot ImageFolder (one subfolder per class) used to purify, relative to the "
                          "repository root."),
        click.option("--classes", metavar="FILE",
                     help="Class names file (one per line or JSON) replacing each checkpoint's manifest list."),
        click.option("--device", type=click.Choice(_DEVICES), default=None,
                     help="Where every check computes: auto (a CUDA GPU when present), cpu (also hides any GPU), or "
                          "cuda (exit 4 without one). Default: the policy's run.device (auto)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--out", "out_dir", default="cbpt-guard-report", show_default=True,
                     type=click.Path(file_okay=False), help="Folder for the reports."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("github")
def github_group() -> None:
    """Gate checkpoints in pull requests and pre-commit hooks."""


@github_group.command("pr")
@click.argument("models", nargs=-1)
@gate_options
@click.option("--repo", envvar="GITHUB_REPOSITORY", metavar="OWNER/NAME", help="Repository [env GITHUB_REPOSITORY].")
@click.option("--pr", "pr_number", type=click.IntRange(1), help="Pull request number (default: from the event).")
@click.option("--head-sha", help="Commit the check run belongs to (default: the pull request's head).")
@click.option("--base-sha", help="Commit a policy file is read from (default: the pull request's base).")
@click.option("--event-path", envvar="GITHUB_EVENT_PATH", type=click.Path(dir_okay=False),
              help="Event payload [env GITHUB_EVENT_PATH].")
@click.option("--token", envvar=["CBPT_TOKEN", "GITHUB_TOKEN"], show_default=False,
              help="API token [env CBPT_TOKEN, GITHUB_TOKEN]; without one nothing is posted.")
@click.option("--api-url", envvar="GITHUB_API_URL", default="https://api.github.com", show_default=True,
              help="REST API base URL (GitHub Enterprise: https://HOST/api/v3) [env GITHUB_API_URL].")
@click.option("--step-summary", envvar="GITHUB_STEP_SUMMARY", type=click.Path(dir_okay=False),
              help="Append the Markdown summary here [env GITHUB_STEP_SUMMARY].")
@click.option("--github-output", envvar="GITHUB_OUTPUT", type=click.Path(dir_okay=False),
              help="Write step outputs here [env GITHUB_OUTPUT].")
@click.option("--comment/--no-comment", default=True, show_default=True, help="Post or update the sticky comment.")
@click.option("--check-run/--no-check-run", default=True, show_default=True, help="Create a check run.")
def pr_command(models, policy, policy_sha256, mode, purify, export, probes, data, classes, device, seed, out_dir, repo,
               pr_number, head_sha, base_sha, event_path, token, api_url, step_summary, github_output, comment,
               check_run):
    """Gate the checkpoints a pull request adds or changes (or MODELS: paths or globs).

    Writes each checkpoint's reports under --out, appends the summary to the
    step summary, updates one sticky comment and creates a check run. Exit code:
    the most severe of the checkpoints' codes (0 when none changed).
    """
    from cbpt_guard.github.client import Connection
    from cbpt_guard.github.context import parse_repo, pull_request_from_event
    from cbpt_guard.github.discover import split_patterns
    from cbpt_guard.github.pr import PublishOptions
    from cbpt_guard.github.publish import PullRequestRef

    if pr_number is not None:
        if not repo:
            raise UsageError("--pr needs --repo (or GITHUB_REPOSITORY)")
        pull_request = PullRequestRef(parse_repo(repo), pr_number, head_sha, base_sha)
    else:
        pull_request = pull_request_from_event(event_path, parse_repo(repo) if repo else None)
        if pull_request is not None and (head_sha or base_sha):
            pull_request = PullRequestRef(pull_request.repo, pull_request.number, head_sha or pull_request.head_sha,
                                          base_sha or pull_request.base_sha)
    patterns = tuple(p for m in models for p in split_patterns(m))
    run = _run(_settings(policy, policy_sha256, mode, purify, export, seed, out_dir, probes, data, classes), device,
               connection=Connection(token=token or None, api_url=api_url), pull_request=pull_request,
               models=patterns, options=PublishOptions(step_summary, comment, check_run))
    _report(run, github_output)
    raise click.exceptions.Exit(run.exit_code)


@github_group.command("changed")
@click.argument("files", nargs=-1)
@gate_options
def changed_command(files, policy, policy_sha256, mode, purify, export, probes, data, classes, device, seed, out_dir):
    """Gate the checkpoints that FILES belong to (the pre-commit hook's entry).

    A file of any kind inside a model folder selects that folder; a weights
    file, side pickle or alike elsewhere is checked by itself; other files are
    ignored. A FILE outside the current directory (the repository root) is a
    usage error (exit 4). Exit 0 when none of FILES is part of a checkpoint.
    """
    from cbpt_guard.github.client import Connection
    from cbpt_guard.github.discover import ChangedFile

    run = _run(_settings(policy, policy_sha256, mode, purify, export, seed, out_dir, probes, data, classes), device,
               connection=Connection(token=None), pull_request=None, changed=[ChangedFile(f) for f in files])
    _report(run, None)
    raise click.exceptions.Exit(run.exit_code)


def action_main(env) -> int:
    """The GitHub Action's run, configured by ``env`` (see :mod:`cbpt_guard.cli.action`); returns the exit code.

    Errors are mapped as the top-level CLI maps them; the step outputs
    ``decision`` and ``exit-code`` are written even then.
    """
    with guarded_output(env):
        return _action_run(env)


def _action_run(env) -> int:
    from cbpt_guard.github.action import inputs_from_env

    github_output = env.get("GITHUB_OUTPUT") or None
    try:
        inputs = inputs_from_env(env)
        _drop_secrets(env)
        if inputs.scan == "intake":
            return _intake(inputs)
        run = _run(inputs.settings, inputs.device, connection=inputs.connection, pull_request=inputs.pull_request,
                   models=inputs.models, options=inputs.options)
        _report(run, inputs.github_output, annotate=True)
        return run.exit_code
    except CbptError as error:
        click.echo(f"cbpt-guard: error: {_plain(error)}", err=True)
        code = int(error.exit_code)
    except Exception as error:  # noqa: BLE001 - the gate fails closed on anything unforeseen
        click.echo(f"cbpt-guard: internal error: {type(error).__name__}: {_plain(error)}", err=True)
        code = int(ExitCode.TOOL_ERROR)
    if github_output:
        from cbpt_guard.github.outputs import write_outputs

        write_outputs(github_output, {"decision": "error", "exit-code": str(code)})
    return code


def _intake(inputs) -> int:
    """The Action's quick tier: find the checkpoints as the full run would, then only inspect each."""
    from cbpt_guard.github.intake_scan import outputs, scan_intake
    from cbpt_guard.github.outputs import append_step_summary, write_outputs
    from cbpt_guard.github.pr import list_targets

    _drop_secrets(os.environ)
    _apply_device(inputs.device)
    targets, problems = list_targets(inputs.settings, inputs.connection, inputs.pull_request, models=inputs.models)
    for problem in problems:
        workflow_command("warning", str(problem))
    if targets is None:  # the pull request's files could not be listed: nothing is known, so nothing passes
        click.echo("cbpt-guard: inconclusive (the pull request's files could not be listed)")
        values = {"decision": "inconclusive", "exit-code": str(int(ExitCode.INCONCLUSIVE))}
        if inputs.github_output:
            write_outputs(inputs.github_output, values)
        return int(ExitCode.INCONCLUSIVE)
    run = scan_intake(targets, inputs.settings, progress=progress_printer())
    click.echo(f"cbpt-guard intake scan: {run.decision} ({len(run.targets)} checkpoint(s); backdoor detection not run)")
    for outcome in run.outcomes:
        click.echo(f"  {_plain(outcome.target)}: {outcome.decision} (exit {outcome.exit_code}): "
                   f"{_plain(outcome.summary)}")
    if inputs.options.step_summary:
        append_step_summary(inputs.options.step_summary, run.markdown)
    if inputs.github_output:
        write_outputs(inputs.github_output, outputs(run))
    return run.exit_code


def _settings(policy, policy_sha256, mode, purify, export, seed, out_dir, probes, data, classes):
    from cbpt_guard.github.gate import GateSettings
    from cbpt_guard.github.policy_overrides import PolicyOverrides

    return GateSettings(policy=policy, overrides=PolicyOverrides(mode=mode, purify=purify, export=export),
                        seed=seed, out_dir=out_dir, probes=probes or None, data=data or None, classes=classes or None,
                        policy_sha256=policy_sha256.lower() if policy_sha256 else None)


def _run(settings, device, **kwargs):
    """Apply the device choice, then run the gate with every check on that device."""
    import dataclasses

    from cbpt_guard.github.pr import run_pull_request

    _drop_secrets(os.environ)
    _apply_device(device)
    return run_pull_request(dataclasses.replace(settings, device=device), progress=progress_printer(), **kwargs)


def _drop_secrets(env) -> None:
    """Take every token variable out of ``env`` (and this process's environment) before any untrusted file is read.

    The token has already been read into the :class:`Connection`; what parses
    checkpoints, configs and manifests, and any process it might start, then
    finds no token in its environment.
    """
    from cbpt_guard.github.action import SECRET_VARIABLES

    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
        if env is not os.environ and hasattr(env, "pop"):
            env.pop(name, None)


def _apply_device(device: str | None) -> None:
    """``cpu``: hide every GPU from this process (before torch loads); ``cuda``: insist on one, before any work.

    The checks themselves run on the device through ``check(device=...)``.
    """
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda":
        from cbpt_guard.device import resolve

        resolve(device)


def _report(run, github_output: str | None, *, annotate: bool = False) -> None:
    """Print the outcome (and, in Actions, the problems as warnings); write the step outputs."""
    from cbpt_guard.github.gate import headline_metrics

    click.echo(run.headline)
    if not run.targets and run.exit_code == 0:
        click.echo("  no checkpoint to check among the changed files")
    for outcome in run.outcomes:
        line = f"  {_plain(outcome.target)}: {outcome.decision} (exit {outcome.exit_code})"
        if outcome.verdict is not None and outcome.verdict.detection is not None:
            line += f", score {outcome.verdict.detection.score:.3f}"
        click.echo(line + (f": {_plain(outcome.error)}" if outcome.error else ""))
    click.echo(f"reports: {run.files.summary_md}, {run.files.sarif}")
    for problem in run.problems:
        if annotate:
            workflow_command("warning", str(problem))
        else:
            click.echo(f"warning: {_plain(problem)}", err=True)
    if github_output:
        from cbpt_guard.github.outputs import write_outputs

        metrics = headline_metrics(run.outcomes)
        scores = [m["score"] for m in metrics.values() if m.get("score") is not None]
        write_outputs(github_output, {
            "decision": run.decision,
            "exit-code": str(run.exit_code),
            "checkpoints": json.dumps(run.targets),
            "report-dir": str(os.path.dirname(run.files.summary_md)),
            "summary": run.files.summary_md,
            "sarif": run.files.sarif,
            "html-reports": "\n".join(run.files.html_reports),
            "verdicts": "\n".join(run.files.verdicts),
            "purified-model": "\n".join(run.files.purified_models),
            "metrics": json.dumps(metrics, sort_keys=True),
            "score": f"{max(scores):.4f}" if scores else "",
        })
