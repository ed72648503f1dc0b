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
"""The one size cap of a manifest and of a ``--classes`` file, however either arrives."""
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 256
MAX_TEMPLATES = 1_000
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
    _check_size(len(text.encode("utf-8", errors="surrogatepass")), origin)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        # ValueError covers json's errors and Python's cap on the digits of an integer
        raise ManifestError(f"{origin}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{origin}: a manifest must be a JSON object")
    unknown = sorted(set(document) - _MANIFEST_KEYS)
    if unknown:
        raise ManifestError(f"{origin}: unknown manifest key(s): {', '.join(map(repr, unknown))}")
    version = document.get("manifest_version")
    if type(version) is not int or version != MANIFEST_VERSION:  # 1.0 and true compare equal to 1
        raise ManifestError(f"{origin}: manifest_version must be the integer {MANIFEST_VERSION}")
    description = document.get("description", "")
    if not isinstance(description, str) or not _is_unicode(description):
        raise ManifestError(f"{origin}: description must be a string of valid Unicode text")
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
        if len(name) > MAX_NAME_CHARS or name.splitlines() != [name]:
            raise ClassListError(f"{origin}: class #{index} is longer than {MAX_NAME_CHARS} characters or spans lines")
        if not _is_unicode(name):
            raise ClassListError(f"{origin}: class #{index} is not valid Unicode text (a lone surrogate)")
        if name in seen:
            raise ClassListError(f"{origin}: class {name!r} appears twice")
        seen.add(name)
    return tuple(classes)


def validate_templates(templates: object, origin: str) -> tuple[str, ...]:
    """Each template is a string with exactly one plain ``{}`` and no other format fields.

    A format spec or conversion (``{:>99999999}``, ``{:d}``, ``{:{}}``, ``{!r}``)
    would either raise when a class name is filled in, long after intake, or
    pad every prompt into noise; only ``str.format``'s plain field is allowed,
    and ``{{``/``}}`` for literal braces.
    """
    if not isinstance(templates, list) or not templates:
        raise ManifestError(f"{origin}: templates must be a non-empty list of strings")
    if len(templates) > MAX_TEMPLATES:
        raise ManifestError(f"{origin}: {len(templates)} templates is more than the limit of {MAX_TEMPLATES}")
    for index, template in enumerate(templates):
        if not isinstance(template, str) or len(template) > MAX_NAME_CHARS or not _is_unicode(template):
            raise ManifestError(
                f"{origin}: template #{index} must be valid Unicode text of at most {MAX_NAME_CHARS} characters"
            )
        if template.splitlines() != [template]:
            raise ManifestError(f"{origin}: template #{index} spans lines")
        try:
            fields = [(field, spec, conversion)
                      for _, field, spec, conversion in string.Formatter().parse(template) if field is not None]
        except ValueError as error:
            raise ManifestError(f"{origin}: template #{index} is not a valid format string ({error})") from None
        if fields != [("", "", None)]:
            raise ManifestError(
                f"{origin}: template #{index} must contain exactly one plain '{{}}' (no other fields, "
                "format spec or conversion)"
            )
        try:
            template.format("x")
        except (ValueError, IndexError, KeyError) as error:  # belt and braces: parse() and format() agree
            raise ManifestError(f"{origin}: template #{index} cannot be filled in ({error})") from None
    return tuple(templates)


def parse_classes_text(text: str, origin: str) -> tuple[str, ...]:
    """Parse a ``--classes`` file: a JSON list, a JSON manifest, or one class per line."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return parse_manifest_text(text, origin).classes
    _check_size(len(text.encode("utf-8", errors="surrogatepass")), origin)
    if stripped.startswith("["):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ClassListError(f"{origin}: not valid JSON ({error})") from None
        return validate_classes(document, origin)
    lines = [line.strip() for line in text.splitlines()]
    return validate_classes([line for line in lines if line and not line.startswith("#")], origin)


def read_text_file(path: Path) -> str:
    """Read a small UTF-8 text file with a size cap, as every untrusted side file is read."""
    try:
        _check_size(path.stat().st_size, str(path))
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot be read ({error.strerror})") from None
    return decode_text(data, str(path))


def decode_text(data: bytes, origin: str) -> str:
    """The UTF-8 text of a manifest or class list already in memory, under the same cap as a file."""
    _check_size(len(data), origin)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{origin}: not UTF-8 text") from None


def _check_size(size: int, origin: str) -> None:
    if size > MAX_FILE_BYTES:
        raise ManifestError(f"{origin}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit")


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's ``"\\ud800"``), which no encoder can write out."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
