"""cbpt-guard: a gate for CLIP-style vision-language checkpoints.

Importing this package is cheap: it loads no torch. The Python API functions
(``inspect`` and ``check``) import their heavy modules when they are first
called, so ``cbpt-guard --help`` stays fast and a registry hook can import
the package without paying for PyTorch.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

__all__ = ["__version__", "check", "inspect", "sweep"]


def inspect(path, *, arch=None, classes_file=None):
    """Safely load a checkpoint and describe it; see :func:`cbpt_guard.intake.inspect_checkpoint`.

    Returns a :class:`cbpt_guard.intake.report.CheckpointReport`; raises a
    :class:`cbpt_guard.errors.CbptError` subclass on bad or unsafe input. Never prints.
    """
    from cbpt_guard.intake import inspect_checkpoint

    return inspect_checkpoint(path, arch=arch, classes_file=classes_file)


def check(model, *, policy="strict", out_dir=None, probes=None, data=None, classes_file=None, arch=None, seed=0,
          today=None, progress=None, repo_root=None, mode=None, device=None):
    """Run the whole gate on a checkpoint and return its Verdict; see :func:`cbpt_guard.pipeline.check`.

    This is the call a model registry makes before promoting a version:
    ``cbpt_guard.check("model/", policy="strict").passed``. Raises only usage
    errors (:class:`cbpt_guard.errors.UsageError`); everything else, failures
    included, is recorded in the returned :class:`cbpt_guard.verdict.Verdict`,
    whose ``decision.exit_code`` is the gate's answer. ``mode`` (enforce, warn,
    dry-run) replaces the policy's own for this run, ``device`` (auto, cpu,
    cuda) its ``run.device``. Never prints.
    """
    from cbpt_guard.pipeline import check as run_check

    return run_check(model, policy=policy, out_dir=out_dir, probes=probes, data=data, classes_file=classes_file,
                     arch=arch, seed=seed, today=today, progress=progress, repo_root=repo_root, mode=mode,
                     device=device)


def sweep(sources, *, policy="strict", out_dir, address=None, num_cpus=None, num_gpus=None, runtime_env=None,
          data=None, probes=None, classes_file=None, arch=None, seed=0, mode=None, tracking_uri=None,
          retry_failed=False, today=None, progress=None):
    """Check every checkpoint that ``sources`` name on Ray and write one report; see :mod:`cbpt_guard.sweeper`.

    ``sources`` are folders, list files (``list:FILE``), hub mirrors
    (``hub:DIR``) or MLflow registries (``models:/NAME``, ``mlflow:URI``). Ray
    runs locally unless ``address`` names a cluster (or Ray is already
    initialised in this process, which is then used). Returns a
    :class:`cbpt_guard.sweeper.SweepResult` whose ``exit_code`` is the worst
    decision; ``out_dir`` holds index.html, results.jsonl, summary.md,
    results.sarif and the store that makes a second sweep resume. Raises only
    usage errors. Never prints.
    """
    from cbpt_guard.sweeper.engine import RayOptions, run_sweep

    sources = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    return run_sweep(sources, policy=policy, out_dir=out_dir,
                     ray_options=RayOptions(address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                                            runtime_env=runtime_env),
                     data=data, probes=probes, classes_file=classes_file, arch=arch, seed=seed, mode=mode,
                     tracking_uri=tracking_uri, retry_failed=retry_failed, today=today, progress=progress)
