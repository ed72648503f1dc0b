"""ONNX export of the deployable (purified) classifier, its parity check, and a torch-free serving module.

- :func:`export_classifier` (in :mod:`.onnx_export`): trace, stamp provenance,
  check against PyTorch, write; returns an :class:`ExportResult`.
- :mod:`.parity`: the check itself (onnxruntime runs in a torch-free child).
- :mod:`.serve`: :class:`~cbpt_guard.export.serve.OnnxClassifier`, numpy and
  onnxruntime only.

Importing this package loads nothing heavy: the names below resolve on first
use, so ``cbpt_guard.export.serve`` can be imported where torch is absent.
"""

from __future__ import annotations

__all__ = ["ExportResult", "ParityError", "export_classifier"]


def __getattr__(name: str):
    if name in __all__:
        from cbpt_guard.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
