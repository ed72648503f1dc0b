"""The ``cbpt-guard`` entry point: a lazily loaded click group and the error-to-exit-code mapping."""

from __future__ import annotations

import importlib
import sys

import click

from cbpt_guard import __version__
from cbpt_guard.cli.optional import OPTIONAL_COMMANDS, load_optional
from cbpt_guard.cli.terminal import guarded_output, one_line
from cbpt_guard.errors import CbptError, ExitCode

# name -> "module:attribute"; a module is imported only when its command runs
# (or when `--help` of that very command is asked for). Optional packages' commands (the zoo) are
# in cli/optional.py, found through entry points.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("cbpt_guard.cli.check_cmd:check_command", "Check a checkpoint under a policy: the whole gate."),
    "calibrate": ("cbpt_guard.cli.detect_cmd:calibrate_command", "Fit detection thresholds on clean models."),
    "export": ("cbpt_guard.cli.export_cmd:export_command",
               "Export the (purified) classifier to ONNX and check its parity."),
    "github": ("cbpt_guard.cli.github_cmd:github_group", "Gate checkpoints in pull requests and pre-commit hooks."),
    "detect": ("cbpt_guard.cli.detect_cmd:detect_command", "Look for a backdoor without labelled data."),
    "inspect": ("cbpt_guard.cli.inspect_cmd:inspect_command", "Load a checkpoint safely and describe it."),
    "policy": ("cbpt_guard.cli.policy_cmd:policy_group", "Validate or show a policy file."),
    "purify": ("cbpt_guard.cli.purify_cmd:purify_command", "Purify by class-wise prompt tuning and verify."),
    "report": ("cbpt_guard.cli.report_cmd:report_command", "Render a saved Verdict as HTML, Markdown, SARIF or JSON."),
    "sweep": ("cbpt_guard.cli.sweep_cmd:sweep_command",
              "Check every checkpoint of a folder, list, hub mirror or MLflow registry on Ray; one report."),
}


class GuardGroup(click.Group):
    """The top-level group: lazy subcommands, and every outcome mapped to a documented exit code.

    Subcommands are imported on first use, so ``--help`` stays free of torch.
    Typed errors print one line (an invalid policy one line per problem) and
    exit with their own code; click's usage errors exit 4 (click's own default,
    2, is ours for internal errors); Ctrl-C exits 130; anything unexpected is an
    internal error (2), never a pass.
    """

    def main(self, args=None, prog_name=None, **extra):  # type: ignore[override]
        extra.pop("standalone_mode", None)
        # Every line printed from here on (ours, click's, a library's) goes through the terminal guard.
        with guarded_output():
            code = self._run(args, prog_name, **extra)
        sys.exit(code)

    def _run(self, args, prog_name, **extra) -> int:
        """Run the command; the exit code of its outcome, with errors printed as one line each."""
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except CbptError as error:
            for line in _error_lines(error):
                click.echo(f"cbpt-guard: error: {line}", err=True)
            return int(error.exit_code)
        except click.exceptions.Exit as done:
            return done.exit_code
        except KeyboardInterrupt:
            return _interrupted()
        except click.Abort as abort:
            if isinstance(abort.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
                return _interrupted()
            click.echo("cbpt-guard: aborted", err=True)
            return int(ExitCode.TOOL_ERROR)
        except click.ClickException as error:
            error.show()
            return int(ExitCode.USAGE)
        except Exception as error:  # noqa: BLE001 - the gate fails closed on anything unforeseen
            click.echo(f"cbpt-guard: internal error: {type(error).__name__}: {one_line(error)}", err=True)
            return int(ExitCode.TOOL_ERROR)
        return int(code) if isinstance(code, int) else int(ExitCode.PASS)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*COMMANDS, *OPTIONAL_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in OPTIONAL_COMMANDS:
            return load_optional(name)
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from COMMANDS so that listing commands imports none of them.
        rows = [(name, COMMANDS[name][1] if name in COMMANDS else OPTIONAL_COMMANDS[name].help)
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _interrupted() -> int:
    """Ctrl-C: one line and exit 130, so that a pipeline never reads a stopped run as a verdict or a crash."""
    click.echo("cbpt-guard: interrupted: the run was stopped before it finished; nothing was judged", err=True)
    return int(ExitCode.INTERRUPTED)


def _error_lines(error: CbptError) -> list[str]:
    """The lines an error prints: one, or for an invalid policy one per problem, so that no typo is hidden."""
    problems = getattr(error, "problems", None)
    if problems and len(problems) > 1:
        return [one_line(problem) for problem in problems]
    return [one_line(error)]


@click.group(cls=GuardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cbpt-guard")
def cli() -> None:
    """cbpt-guard: a gate for CLIP-style checkpoints.

    \b
    Exit codes:
      0  pass
      1  blocked (by the policy, or unsafe input)
      2  the tool failed (internal error)
      3  inconclusive (nothing scannable, unsupported, a required step skipped)
      4  usage or policy error
      130  interrupted (Ctrl-C)
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="cbpt-guard")
