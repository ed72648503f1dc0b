"""The JSON Schema of the Verdict file, generated from the pydantic model and committed beside this module.

Consumers outside Python (a dashboard, a registry hook) validate ``verdict.json``
against ``verdict.schema.json``. The committed file is exactly what
:func:`verdict_schema_text` generates (a test compares them), so it cannot fall
behind the model; regenerate it with ``python -m cbpt_guard.report.schema``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cbpt_guard.verdict import VERDICT_SCHEMA_VERSION, Verdict

SCHEMA_FILE = Path(__file__).with_name("verdict.schema.json")


def verdict_schema() -> dict:
    """The JSON Schema (draft 2020-12) of :meth:`Verdict.to_json`'s output.

    ``schema_version`` is pinned to the version this release writes and reads,
    so a validator refuses a Verdict from another version as the reader does.
    """
    schema = Verdict.model_json_schema(mode="serialization")
    schema["properties"]["schema_version"]["const"] = VERDICT_SCHEMA_VERSION
    schema["required"] = ["schema_version", *schema.get("required", [])]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def verdict_schema_text() -> str:
    """:func:`verdict_schema` as the exact text of the committed file (sorted keys, two-space indent)."""
    return json.dumps(verdict_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def committed_schema() -> dict:
    """The schema file that ships with the package."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


if __name__ == "__main__":  # regenerate the committed file after changing the Verdict model
    SCHEMA_FILE.write_text(verdict_schema_text(), encoding="utf-8")
