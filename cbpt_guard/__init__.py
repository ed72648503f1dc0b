"""cbpt-guard: a gate for CLIP-style vision-language checkpoints.

Importing this package is cheap: it loads no torch. The Python API functions
(``inspect`` and, as the stages land, the others) import their heavy modules
when they are first called, so ``cbpt-guard --help`` stays fast and a
registry hook can import the package without paying for PyTorch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "inspect"]


def inspect(path, *, arch=None, classes_file=None):
    """Safely load a checkpoint and describe it; see :func:`cbpt_guard.intake.inspect_checkpoint`.

    Returns a :class:`cbpt_guard.intake.report.CheckpointReport`; raises a
    :class:`cbpt_guard.errors.CbptError` subclass on bad or unsafe input. Never prints.
    """
    from cbpt_guard.intake import inspect_checkpoint

    return inspect_checkpoint(path, arch=arch, classes_file=classes_file)
