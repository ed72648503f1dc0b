"""Where the Jinja templates of the reports are: beside the package in a checkout, or installed as data files.

The templates live in the repository's top-level ``templates/`` folder, outside
the package. An editable install or a checkout finds them next to the package;
a wheel installs them as data files under ``<prefix>/share/cbpt-guard/templates``
(pyproject's ``[tool.setuptools.data-files]``), found through ``sys.prefix``.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

from cbpt_guard.errors import CbptError

MAIN_TEMPLATE = "report.html.j2"
SHARE_PARTS = ("share", "cbpt-guard", "templates")
CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
"""The repository's ``templates/`` beside the package (a checkout or an editable install)."""


def template_dirs() -> list[Path]:
    """Every folder searched for the templates, in order: the checkout's ``templates/``, then installed data."""
    prefixes = [sys.prefix, sysconfig.get_path("data"), getattr(site, "USER_BASE", None)]
    found = [CHECKOUT_TEMPLATES] + [Path(p).joinpath(*SHARE_PARTS) for p in prefixes if p]
    unique: list[Path] = []
    for folder in found:
        if folder not in unique:
            unique.append(folder)
    return unique


def template_dir() -> Path:
    """The first folder of :func:`template_dirs` that holds the main report template.

    Raises :class:`CbptError` (exit 2, the tool is broken) naming every folder
    looked in, when the installation lacks its templates.
    """
    for folder in template_dirs():
        if (folder / MAIN_TEMPLATE).is_file():
            return folder
    looked = ", ".join(str(f) for f in template_dirs())
    raise CbptError(f"the report templates are missing from this installation (looked for {MAIN_TEMPLATE} in "
                    f"{looked})")
