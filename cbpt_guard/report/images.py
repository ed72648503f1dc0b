"""Inline pictures for the HTML report: only PNG data URIs that are exactly what they claim get through.

A Verdict can be read back from a file anyone could have edited, so an image
"URI" in it is untrusted: a ``javascript:`` URL, an SVG with script, or a
remote address would turn the offline report into something that acts or
calls out. :func:`safe_png_data_uri` lets through a base64 PNG and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from cbpt_guard.verdict import FamilyEvidence

PNG_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_CHARS = 4_000_000
"""Largest data URI kept (about 3 MB of PNG); a report is not the place for bigger pictures."""
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

# How each image key is captioned, in the order the report shows them: the
# inverted trigger first, then a clean probe beside its stamped copy.
CAPTIONS = {
    "mask": "inverted mask",
    "pattern": "inverted pattern",
    "perturbation": "inverted perturbation",
    "flow": "inverted warp field",
    "clean": "clean probe",
    "stamped": "stamped copy",
}


def safe_png_data_uri(value: object) -> str | None:
    """``value`` if it is a well-formed ``data:image/png;base64,`` URI of a real PNG, else None.

    Checks the exact prefix, the base64 alphabet and padding, the size limit, and
    that the decoded bytes start with the PNG signature.
    """
    if not isinstance(value, str) or not value.startswith(PNG_PREFIX) or len(value) > MAX_IMAGE_CHARS:
        return None
    payload = value[len(PNG_PREFIX):]
    if not payload or len(payload) % 4 or not _BASE64.fullmatch(payload):
        return None
    try:
        head = base64.b64decode(payload[:64], validate=True)
    except (binascii.Error, ValueError):
        return None
    return value if head.startswith(PNG_SIGNATURE) else None


@dataclasses.dataclass(frozen=True)
class Picture:
    """One captioned image for the report, already validated."""

    key: str
    caption: str
    uri: str


def family_pictures(evidence: FamilyEvidence) -> tuple[list[Picture], list[str]]:
    """The family's pictures in display order, and the keys of images dropped as not safe PNG data URIs."""
    order = list(CAPTIONS) + sorted(k for k in evidence.images if k not in CAPTIONS)
    pictures, dropped = [], []
    for key in order:
        if key not in evidence.images:
            continue
        uri = safe_png_data_uri(evidence.images[key])
        if uri is None:
            dropped.append(key)
        else:
            pictures.append(Picture(key, CAPTIONS.get(key, key), uri))
    return pictures, dropped
