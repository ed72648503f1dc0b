"""Safe checkpoint intake: find, identify, scan, hash and load checkpoints without running their code.

The public entry points are :func:`inspect_checkpoint` (describe a checkpoint)
and :func:`load_checkpoint` (the same, plus the ready ``torch.nn.Module`` for
later stages). Both import torch lazily.
"""

from __future__ import annotations

__all__ = ["inspect_checkpoint", "load_checkpoint"]


def load_checkpoint(path, *, arch=None, classes_file=None):
    """Load a checkpoint safely; see :func:`cbpt_guard.intake.loader.load_checkpoint`."""
    from cbpt_guard.intake.loader import load_checkpoint as _load

    return _load(path, arch=arch, classes_file=classes_file)


def inspect_checkpoint(path, *, arch=None, classes_file=None):
    """Load a checkpoint safely and return only its :class:`CheckpointReport`."""
    return load_checkpoint(path, arch=arch, classes_file=classes_file).report
