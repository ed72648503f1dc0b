"""The ``--device`` flag every computing command shares (check, detect, calibrate, purify, export, github)."""

from __future__ import annotations

import click

from cbpt_guard.device import DEVICE_CHOICES


def device_option(*, policy: bool):
    """``--device auto|cpu|cuda``; unset, a command with a policy takes its ``run.device``, any other ``auto``."""
    default = "the policy's run.device (auto)" if policy else "auto"
    return click.option("--device", type=click.Choice(DEVICE_CHOICES), default=None,
                        help=f"Where the run computes: auto (a CUDA GPU when one is visible, else the CPU), cpu, or "
                             f"cuda (exit 4 without a GPU). Default: {default}.")
