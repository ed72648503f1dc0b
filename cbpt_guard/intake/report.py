"""The data objects intake returns: what was read, how it was identified, and what the model is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from cbpt_guard.errors import ClassListError

FileRole = Literal["weights", "config", "manifest", "other"]
Layout = Literal["open_clip-dir", "hf-clip-dir", "weights-file"]


class FileRecord(BaseModel):
    """One file intake read: its digest and what its bytes (not its name) say it is."""

    model_config = ConfigDict(frozen=True)

    path: str
    size: int
    sha256: str
    kind: str
    role: FileRole
    note: str = ""


class SkippedItem(BaseModel):
    """Something intake passed over, and why, so a report never mistakes it for 'nothing found'."""

    model_config = ConfigDict(frozen=True)

    path: str
    reason: str


class CheckpointReport(BaseModel):
    """Everything ``cbpt-guard inspect`` reports about a checkpoint."""

    model_config = ConfigDict(frozen=True)

    source: str
    layout: Layout
    architecture: str
    model_class: str
    checkpoint_sha256: str
    parameter_count: int
    tensor_count: int
    dtypes: dict[str, int]
    image_size: tuple[int, int]
    context_length: int
    embed_dim: int
    vision_tower: str
    preprocess: dict[str, object]
    classes: tuple[str, ...] | None
    class_count: int | None
    classes_source: str | None
    templates: tuple[str, ...]
    files: tuple[FileRecord, ...]
    skipped: tuple[SkippedItem, ...] = ()

    def require_classes(self, where: object, remedy: str = "add cbpt_manifest.json or pass --classes"
                        ) -> tuple[str, ...]:
        """The deployment's class names, or :class:`~cbpt_guard.errors.ClassListError` (exit 4) naming ``where``.

        Every command that classifies needs them and refuses the same way,
        before any expensive stage; ``remedy`` says how to supply them where
        the command has no ``--classes``.
        """
        if not self.classes:
            raise ClassListError(f"{where}: no class names ({remedy})")
        return self.classes
