"""The GitHub Action's entry point: ``python -I -m cbpt_guard.cli.action``, configured by environment only.

The inputs are parsed by :mod:`cbpt_guard.github.action`; this module owns the
process: it keeps the token out of the environment of the process that parses
the pull request's files, runs :func:`cbpt_guard.cli.github_cmd.action_main`
and exits with its code. It lives in ``cli/`` because it prints and exits, and
so that ``github/`` never imports the command line.
"""

from __future__ import annotations

import os
import sys

from cbpt_guard.cli.github_cmd import action_main
from cbpt_guard.github.action import SECRET_VARIABLES

_SECRETS_FD = "CBPT_SECRETS_FD"
_MAX_SECRETS_BYTES = 60_000  # below a pipe's 64 KiB buffer, so the write cannot block before exec


def main() -> None:
    """Run the action with this process's environment and exit with the gate's code.

    A process's initial environment stays readable in ``/proc/self/environ``
    even after ``os.environ.pop``. So when a token is in the environment, the
    process re-executes itself without it, handing the token over through an
    inherited pipe: the process that parses the pull request's files never had
    the token in its environment at all.
    """
    secrets = _receive_secrets()
    if not secrets and any(os.environ.get(name) for name in SECRET_VARIABLES):
        _reexec_without_secrets()
    sys.exit(action_main(dict(os.environ) | secrets))


def _reexec_without_secrets() -> None:
    """Replace this process with a fresh one whose environment holds no token; the token goes through a pipe."""
    import json

    secrets = {name: os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}
    payload = json.dumps(secrets).encode("utf-8")
    if len(payload) > _MAX_SECRETS_BYTES:
        return  # implausibly large: fall back to dropping the variables before intake
    read_end, write_end = os.pipe()
    os.write(write_end, payload)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES} | {_SECRETS_FD: str(read_end)}
    flags = ["-I"] if sys.flags.isolated else []
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *flags, "-m", "cbpt_guard.cli.action"], env)


def _receive_secrets() -> dict[str, str]:
    """The secrets handed over by :func:`_reexec_without_secrets`, read from the pipe and its variable removed."""
    import json

    fd = os.environ.pop(_SECRETS_FD, None)
    if fd is None:
        return {}
    try:
        with os.fdopen(int(fd), "rb") as pipe:
            secrets = json.loads(pipe.read(_MAX_SECRETS_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(secrets, dict):
        return {}
    return {k: v for k, v in secrets.items() if k in SECRET_VARIABLES and isinstance(v, str)}


if __name__ == "__main__":
    main()
