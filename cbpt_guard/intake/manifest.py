"""The deployment manifest: the class names and prompt templates a checkpoint is served with.

A zero-shot CLIP classifier is defined as much by its class names and prompt
templates as by its weights, so cbpt-guard reads them from a small JSON file in
the model directory (``cbpt_manifest.json``)::

    {
      "manifest_version": 1,
      "classes": ["circle", "square", "triangle"],
      "templates": ["a photo of a {}.", "a drawing of a {}."],
      "description": "optional free text"
    }

A ``--classes FILE`` flag overrides the classes: a text file with one class per
line (blank lines and lines starting with ``#`` ignored), a JSON list of
strings, or a JSON manifest. Everything here is untrusted input: sizes are
capped and every error is a :class:`ManifestError` or :class:`ClassListError`.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from cbpt_guard.errors import ClassListError, ManifestError

MANIFEST_NAME = "cbpt_manifest.json"
MANIFEST_VERSION = 1
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 256
DEFAULT_TEMPLATES = ("a photo of a {}.",)
_MANIFEST_KEYS = {"manifest_version", "classes", "templates", "description"}


@dataclass(frozen=True)
class Manifest:
    """Validated class names and templates; ``source`` says where they came from."""

    classes: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    description: str = ""
    source: str = "default"


def parse_manifest_text(text: str, origin: str) -> Manifest:
    """Parse and validate manifest JSON text."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ManifestError(f"{origin}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{origin}: a manifest must be a JSON object")
    unknown = sorted(set(document) - _MANIFEST_KEYS)
    if unknown:
        raise ManifestError(f"{origin}: unknown manifest key(s): {', '.join(map(repr, unknown))}")
    if document.get("manifest_version") != MANIFEST_VERSION:
        raise ManifestError(f"{origin}: manifest_version must be {MANIFEST_VERSION}")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise ManifestError(f"{origin}: description must be a string")
    classes = validate_classes(document.get("classes"), origin)
    templates = validate_templates(document.get("templates", list(DEFAULT_TEMPLATES)), origin)
    return Manifest(classes, templates, description, origin)


def validate_classes(classes: object, origin: str) -> tuple[str, ...]:
    """Class names must be a non-empty list of distinct, non-blank, single-line strings."""
    if not isinstance(classes, list):
        raise ClassListError(f"{origin}: classes must be a list of strings")
    if not classes:
        raise ClassListError(f"{origin}: the class list is empty")
    if len(classes) > MAX_CLASSES:
        raise ClassListError(f"{origin}: {len(classes)} classes is more than the limit of {MAX_CLASSES}")
    seen: set[str] = set()
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise ClassListError(f"{origin}: class #{index} must be a non-blank string")
        if len(name) > MAX_NAME_CHARS or "\n" in name or "\r" in name:
            raise ClassListError(f"{origin}: class #{index} is longer than {MAX_NAME_CHARS} characters or spans lines")
        if name in seen:
            raise ClassListError(f"{origin}: class {name!r} appears twice")
        seen.add(name)
    return tuple(classes)


def validate_templates(templates: object, origin: str) -> tuple[str, ...]:
    """Each template is a string with exactly one ``{}`` and no other format fields."""
    if not isinstance(templates, list) or not templates:
        raise ManifestError(f"{origin}: templates must be a non-empty list of strings")
    for index, template in enumerate(templates):
        if not isinstance(template, str) or len(template) > MAX_NAME_CHARS:
            raise ManifestError(f"{origin}: template #{index} must be a string of at most {MAX_NAME_CHARS} characters")
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        except ValueError as error:
            raise ManifestError(f"{origin}: template #{index} is not a valid format string ({error})") from None
        if fields != [""]:
            raise ManifestError(f"{origin}: template #{index} must contain exactly one '{{}}' and no other fields")
    return tuple(templates)


def parse_classes_text(text: str, origin: str) -> tuple[str, ...]:
    """Parse a ``--classes`` file: a JSON list, a JSON manifest, or one class per line."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return parse_manifest_text(text, origin).classes
    if stripped.startswith("["):
        try:
            return validate_classes(json.loads(text), origin)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ClassListError(f"{origin}: not valid JSON ({error})") from None
    lines = [line.strip() for line in text.splitlines()]
    return validate_classes([line for line in lines if line and not line.startswith("#")], origin)


def read_text_file(path: Path) -> str:
    """Read a small UTF-8 text file with a size cap, as every untrusted side file is read."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot be read ({error.strerror})") from None
