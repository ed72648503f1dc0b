"""``cbpt-guard policy``: validate a policy file, or show a policy with its defaults filled in."""

from __future__ import annotations

import datetime as dt

import click

from cbpt_guard.cli.terminal import one_line
from cbpt_guard.errors import ExitCode


@click.group("policy")
def policy_group() -> None:
    """Validate or show a policy file.

    Ready policies: strict, balanced, permissive (see policies/ in the repository).
    """


@policy_group.command("validate")
@click.argument("file", type=click.Path(path_type=str))
@click.pass_context
def validate_command(ctx: click.Context, file: str) -> None:
    """Check FILE against the policy schema.

    Prints "ok: NAME (sha256 DIGEST)" and exits 0, or prints one line per
    problem (file:line: key: message) and exits 4. A detection budget its
    calibration was not fitted at is a problem too: every check under the
    policy would be inconclusive. Waivers that have expired are noted but are
    not errors: they re-activate their finding at check time.
    """
    from cbpt_guard.errors import UsageError
    from cbpt_guard.pipeline import uncalibrated_budget
    from cbpt_guard.policy import PolicyError, load_policy

    try:
        loaded = load_policy(file)
    except PolicyError as error:
        for problem in error.problems:
            click.echo(one_line(problem), err=True)
        ctx.exit(int(ExitCode.USAGE))
    try:
        uncalibrated = uncalibrated_budget(loaded)
    except UsageError as error:  # the calibration file named is missing or invalid
        uncalibrated = str(error)
    if uncalibrated:
        click.echo(f"{file}: detection: {uncalibrated}", err=True)
        ctx.exit(int(ExitCode.USAGE))
    click.echo(f"ok: {loaded.name} (sha256 {loaded.sha256})")
    today = dt.date.today()
    for waiver in loaded.policy.waivers:
        if waiver.is_expired(today):
            click.echo(f"note: waiver {waiver.id} expired on {waiver.expires.isoformat()}; "
                       "its finding is active again", err=True)


@policy_group.command("show")
@click.argument("name")
def show_command(name: str) -> None:
    """Print policy NAME (a ready policy such as "strict", or a path) as YAML, defaults filled in."""
    import yaml

    from cbpt_guard.policy import resolve_policy

    loaded = resolve_policy(name)
    document = loaded.policy.model_dump(mode="json")
    click.echo(f"# {loaded.name}: {loaded.source}")
    click.echo(f"# sha256 {loaded.sha256}")
    click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True), nl=False)
