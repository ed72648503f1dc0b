"""Commands that live outside the product, in optional packages found through entry points.

The model zoo (poisoning attacks, the trainer of the zoo's clean and backdoored
models) is research code: it ships as its own package, ``cbpt_guard_zoo``,
beside ``cbpt_guard``, and its dependencies come with the ``zoo`` extra. The
product never imports it (an import-linter contract in pyproject.toml holds
that): the zoo registers its click group under the ``cbpt_guard.commands``
entry-point group, and the CLI loads what is registered under a command's name
only when that command runs. When it is absent (not registered, or its
package cannot be imported because the extra's dependencies are missing), the
command is a stand-in that says in one line how to install it and exits 4, the
code of a request that cannot work as asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from cbpt_guard.errors import UsageError

ENTRY_POINT_GROUP = "cbpt_guard.commands"


@dataclass(frozen=True)
class OptionalCommand:
    """A command provided by an optional package: its one-line help and the extra that installs it."""

    help: str
    extra: str


OPTIONAL_COMMANDS: dict[str, OptionalCommand] = {
    "zoo": OptionalCommand("Build the zoo of clean and backdoored models (the [zoo] extra).", "zoo"),
}


def registered(name: str):
    """The entry points registered for command ``name`` (``importlib.metadata.EntryPoint``), in install order."""
    from importlib.metadata import entry_points

    return [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]


def load_optional(name: str) -> click.Command:
    """The optional command ``name``, or a stand-in that explains how to install it when it cannot be loaded."""
    spec = OPTIONAL_COMMANDS[name]
    points = registered(name)
    if not points:
        return _absent(name, spec, "it is not installed")
    try:
        command = points[0].load()
    except ImportError as error:  # the package, or a dependency of its extra, is missing
        return _absent(name, spec, f"{error.name or 'a module it needs'} is not installed")
    if not isinstance(command, click.Command):
        raise TypeError(f"the {ENTRY_POINT_GROUP} entry point {name!r} is not a click command")
    return command


def _absent(name: str, spec: OptionalCommand, why: str) -> click.Command:
    """A command that takes any arguments (``--help`` too) and fails with the one line that says how to get it."""

    @click.command(name, add_help_option=False, help=spec.help,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
    def stand_in(arguments: tuple[str, ...]) -> None:
        raise UsageError(f"`cbpt-guard {name}` is an optional part and {why}: "
                         f"install it with pip install 'cbpt-guard[{spec.extra}]'")

    return stand_in
