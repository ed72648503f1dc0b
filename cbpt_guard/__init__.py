"""cbpt-guard: a gate for CLIP-style vision-language checkpoints.

Importing this package is cheap: it loads no torch. The Python API functions
(``inspect`` and ``check``) import their heavy modules when they are first
called, so ``cbpt-guard --help`` stays fast and a registry hook can import
the package without paying for PyTorch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "check", "inspect"]


def inspect(path, *, arch=None, classes_file=None):
    """Safely load a checkpoint and describe it; see :func:`cbpt_guard.intake.inspect_checkpoint`.

    Returns a :class:`cbpt_guard.intake.report.CheckpointReport`; raises a
    :class:`cbpt_guard.errors.CbptError` subclass on bad or unsafe input. Never prints.
    """
    from cbpt_guard.intake import inspect_checkpoint

    return inspect_checkpoint(path, arch=arch, classes_file=classes_file)


def check(model, *, policy="strict", out_dir=None, probes=None, data=None, classes_file=None, arch=None, seed=0,
          today=None, progress=None, repo_root=None):
    """Run the whole gate on a checkpoint and return its Verdict; see :func:`cbpt_guard.pipeline.check`.

    This is the call a model registry makes before promoting a version:
    ``cbpt_guard.check("model/", policy="strict").passed``. Raises only usage
    errors (:class:`cbpt_guard.errors.UsageError`); everything else, failures
    included, is recorded in the returned :class:`cbpt_guard.verdict.Verdict`,
    whose ``decision.exit_code`` is the gate's answer. Never prints.
    """
    from cbpt_guard.pipeline import check as run_check

    return run_check(model, policy=policy, out_dir=out_dir, probes=probes, data=data, classes_file=classes_file,
                     arch=arch, seed=seed, today=today, progress=progress, repo_root=repo_root)
