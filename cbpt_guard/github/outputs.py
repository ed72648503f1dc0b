"""Writing to the files GitHub Actions reads: step outputs (``$GITHUB_OUTPUT``) and the step summary.

Values can hold text from a pull request (a path with a newline in it), so every
output is written in the multi-line form with a fresh random delimiter that the
value is checked not to contain: a value can never end its own entry early and
forge another output.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping


def format_outputs(values: Mapping[str, str]) -> str:
    """``values`` in GitHub's ``name<<DELIMITER`` form, one entry each."""
    chunks = []
    for name, value in values.items():
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a valid output name: {name!r}")
        text = str(value)
        delimiter = f"cbpt_guard_{secrets.token_hex(16)}"
        while delimiter in text:  # vanishingly unlikely, but a collision would let a value forge outputs
            delimiter = f"cbpt_guard_{secrets.token_hex(16)}"
        chunks.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    return "".join(chunks)


def write_outputs(path: str, values: Mapping[str, str]) -> None:
    """Append ``values`` to the step-outputs file at ``path``."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(format_outputs(values))


def append_step_summary(path: str, markdown: str) -> None:
    """Append ``markdown`` to the job's step summary file at ``path``."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(markdown.rstrip("\n") + "\n")
