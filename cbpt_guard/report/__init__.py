"""Reports: one Verdict in, one string out per format (JSON, HTML, Markdown, SARIF).

Every format renders from the Verdict alone, so the JSON and the HTML can never
disagree, and a saved ``verdict.json`` can be re-rendered later on a machine
without the ML stack: nothing here imports torch.

- :func:`render` gives one format as text;
- :func:`write_reports` writes all four into a folder;
- :func:`read_verdict` reads a saved Verdict back, with one-line errors.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cbpt_guard.errors import UsageError
from cbpt_guard.verdict import Verdict

FORMATS = ("html", "md", "sarif", "json")
"""The formats :func:`render` accepts ("markdown" is taken as "md")."""

REPORT_FILES = {"verdict": "verdict.json", "html": "report.html", "markdown": "summary.md",
                "sarif": "results.sarif"}
"""The files :func:`write_reports` writes, by role (the Verdict's ``artefacts`` roles)."""

_ROLE_FORMATS = {"verdict": "json", "html": "html", "markdown": "md", "sarif": "sarif"}

__all__ = ["FORMATS", "REPORT_FILES", "read_verdict", "render", "write_reports"]


def _format(fmt: str) -> str:
    name = fmt.strip().lower()
    name = "md" if name == "markdown" else name
    if name not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return name


def render(verdict: Verdict, fmt: str, *, repo_root: str | None = None, absolute_paths: bool = False) -> str:
    """``verdict`` rendered as ``fmt`` (html, md, sarif or json).

    SARIF locations are relative to ``repo_root``, else to the detected
    repository root (:func:`cbpt_guard.report.sarif.default_roots`);
    ``absolute_paths`` makes them absolute ``file://`` URIs instead.

    Raises :class:`UsageError` for an unknown format.
    """
    name = _format(fmt)
    if name == "json":
        return verdict.to_json()
    if name == "html":
        from cbpt_guard.report.html import render_html

        return render_html(verdict)
    if name == "md":
        from cbpt_guard.report.markdown import render_markdown

        return render_markdown(verdict)
    from cbpt_guard.report.sarif import render_sarif

    return render_sarif(verdict, repo_root=repo_root, absolute=absolute_paths)


def _write_atomically(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` through a temporary file, so a reader never sees half a report.

    Every file cbpt-guard writes (reports, the ONNX export, the purified
    prompts) gets the ordinary permissions of the caller's umask (0644 under
    the usual 022), none 0600: they hold digests, numbers and class names, no
    secret, and exist to be read by others (uploaded as CI artefacts, served,
    deployed). So the temporary file is created with ``open(..., "x")``, not
    ``mkstemp``, whose 0600 would survive the rename.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8", newline="\n") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_reports(verdict: Verdict, out_dir: str | os.PathLike, *, repo_root: str | None = None) -> dict[str, str]:
    """Write verdict.json, report.html, summary.md and results.sarif into ``out_dir``; return role -> file name.

    Everything is rendered before the first file is written, so a rendering
    error leaves no partial set of reports behind.
    """
    folder = Path(out_dir)
    contents = {role: render(verdict, _ROLE_FORMATS[role], repo_root=repo_root) for role in REPORT_FILES}
    folder.mkdir(parents=True, exist_ok=True)
    for role, name in REPORT_FILES.items():
        _write_atomically(folder / name, contents[role])
    return dict(REPORT_FILES)


def read_verdict(path: str | os.PathLike) -> Verdict:
    """Read a Verdict saved by :meth:`Verdict.to_json`; any problem is a one-line :class:`UsageError`."""
    from pydantic import ValidationError

    from cbpt_guard.report.text import one_line

    name = one_line(path, 300)
    try:
        content = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a Verdict file (not UTF-8 text)") from None
    except OSError as error:
        raise UsageError(f"cannot read the verdict file {name}: {error.strerror or error}") from None
    try:
        return Verdict.from_json(content)
    except json.JSONDecodeError as error:
        raise UsageError(f"{name}: not a Verdict file (invalid JSON at line {error.lineno}, column "
                         f"{error.colno}: {error.msg})") from None
    except ValidationError as error:
        problems = error.errors()
        first = problems[0]
        where = one_line(".".join(str(part) for part in first["loc"]), 200) or "(top level)"
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        message = one_line(first["msg"], 300)
        raise UsageError(f"{name}: not a valid Verdict: {where}: {message}{more}") from None
    except RecursionError:
        raise UsageError(f"{name}: not a Verdict file (JSON nested too deeply)") from None
    except ValueError as error:
        raise UsageError(f"{name}: {one_line(error, 500)}") from None
