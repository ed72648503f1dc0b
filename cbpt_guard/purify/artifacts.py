"""Saved purification results: the learned prompts and class embeddings, with their manifest.

A purified deployment is the *unchanged* checkpoint plus this artefact: a
safetensors file with the learned context ``ctx`` (n_cls, n_ctx, width), the
tuned unit class embeddings (n_cls, d) and the hand-written ones they started
from, and a JSON manifest beside it (source checkpoint digest, classes,
settings, metrics). :func:`purified_classifier` puts them back together and
refuses prompts made for another checkpoint or another class list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.errors import ManifestError, UsageError

PROMPTS_FILE = "prompts.safetensors"
MANIFEST_FILE = "prompts.json"
PROMPTS_MANIFEST_VERSION = 1
_TENSORS = ("ctx", "class_embeddings", "original_embeddings")


@dataclass(frozen=True)
class PurifiedPrompts:
    """Learned prompts as loaded from disk; ``manifest`` is the JSON beside the tensors."""

    ctx: torch.Tensor  # (n_cls, n_ctx, width)
    class_embeddings: torch.Tensor  # (n_cls, d), unit
    original_embeddings: torch.Tensor  # (n_cls, d), unit
    manifest: dict
    sha256: str
    """SHA-256 of the safetensors file: the prompts' digest in reports and ONNX metadata."""

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the row order of the embeddings."""
        return tuple(self.manifest["classes"])


def save_prompts(folder: str | Path, *, ctx: torch.Tensor, class_embeddings: torch.Tensor,
                 original_embeddings: torch.Tensor, source_digest: str, classes: tuple[str, ...],
                 settings: dict, metrics: dict) -> Path:
    """Write ``prompts.safetensors`` and ``prompts.json`` into ``folder``; returns the safetensors path.

    The manifest records the safetensors file's SHA-256, so a swapped tensor
    file is caught at load time.
    """
    from safetensors.torch import save_file

    if not (len(classes) == len(ctx) == len(class_embeddings) == len(original_embeddings)):
        raise UsageError("prompts, embeddings and classes must have one row per class")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROMPTS_FILE
    tensors = {"ctx": ctx, "class_embeddings": class_embeddings, "original_embeddings": original_embeddings}
    save_file({name: value.detach().float().contiguous().cpu() for name, value in tensors.items()}, str(path))
    manifest = {
        "prompts_manifest_version": PROMPTS_MANIFEST_VERSION,
        "source_checkpoint_sha256": source_digest,
        "classes": list(classes),
        "prompts_sha256": _sha256(path),
        "settings": settings,
        "metrics": metrics,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_prompts(path: str | Path) -> PurifiedPrompts:
    """Load prompts saved by :func:`save_prompts` from their folder or their safetensors file.

    Raises :class:`ManifestError` when the manifest is missing or malformed, or
    when the tensor file is not the one the manifest describes.
    """
    from cbpt_guard.intake.safetensors_reader import read_safetensors

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensor_path = folder / PROMPTS_FILE if path.is_dir() else path
    manifest_path = folder / MANIFEST_FILE
    if not tensor_path.is_file():
        raise ManifestError(f"{tensor_path}: no such prompts file")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ManifestError(f"{manifest_path}: cannot read the prompts manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("prompts_manifest_version") != PROMPTS_MANIFEST_VERSION:
        raise ManifestError(f"{manifest_path}: not a version-{PROMPTS_MANIFEST_VERSION} prompts manifest")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ManifestError(f"{manifest_path}: 'classes' must be a non-empty list of names")
    data = tensor_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("prompts_sha256"):
        raise ManifestError(f"{tensor_path}: SHA-256 {digest[:12]}... does not match the manifest's prompts_sha256")
    tensors, _ = read_safetensors(data, str(tensor_path))
    missing = [name for name in _TENSORS if name not in tensors]
    if missing:
        raise ManifestError(f"{tensor_path}: missing tensors {', '.join(missing)}")
    if any(len(tensors[name]) != len(classes) for name in _TENSORS):
        raise ManifestError(f"{tensor_path}: tensor rows do not match the {len(classes)} classes of the manifest")
    return PurifiedPrompts(ctx=tensors["ctx"].float(), class_embeddings=tensors["class_embeddings"].float(),
                           original_embeddings=tensors["original_embeddings"].float(), manifest=manifest,
                           sha256=digest)


def purified_classifier(model: torch.nn.Module, prompts: PurifiedPrompts, *, checkpoint_digest: str | None = None,
                        classes: tuple[str, ...] | None = None) -> ZeroShotClassifier:
    """The zero-shot classifier of ``model`` with the purified class embeddings in place of the hand-written ones.

    Give ``checkpoint_digest`` (and ``classes``) to refuse prompts learned for
    another checkpoint (or class list): the prompts only purify the exact
    encoders they were tuned against.
    """
    source = prompts.manifest.get("source_checkpoint_sha256")
    if checkpoint_digest is not None and source != checkpoint_digest:
        raise UsageError(f"these prompts were tuned for checkpoint {str(source)[:12]}..., "
                         f"not {checkpoint_digest[:12]}...")
    if classes is not None and tuple(classes) != prompts.classes:
        raise UsageError("these prompts were tuned for a different class list")
    return ZeroShotClassifier(model, prompts.class_embeddings)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
