"""The output folder of ``check`` and ``purify`` (and the file of ``export``): fresh, or cleared with ``--overwrite``.

A report folder that still holds a previous run's ``classifier.onnx``, or
another checkpoint's ``purified/``, beside a new INCONCLUSIVE verdict tells a
reader (or a deploy script that picks up whatever ONNX file it finds) that the
new run produced them. So a folder that is not empty is refused, before any
work, unless ``--overwrite`` is given; then the files cbpt-guard itself writes
there are removed first, and nothing else: a file the tool did not write is
left where it is and named, never deleted.
"""

from __future__ import annotations

from pathlib import Path

from cbpt_guard.errors import UsageError

OVERWRITE_HELP = ("Replace a previous run's files in a non-empty output: cbpt-guard's own files there are removed "
                  "first; any other file is left in place and named.")
_TEMPORARY_SUFFIXES = (".tmp", ".partial")
"""The report and ONNX writers' temporary files (``.report.html.x1y2.tmp``), which a killed run may leave."""


def tool_files() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """The names a check writes into its output folder: top-level files, and folders with the files they hold."""
    from cbpt_guard.pipeline import ONNX_FILE, PROMPTS_DIR
    from cbpt_guard.purify.artifacts import MANIFEST_FILE, PROMPTS_FILE
    from cbpt_guard.report import REPORT_FILES

    return frozenset({*REPORT_FILES.values(), ONNX_FILE}), {PROMPTS_DIR: frozenset({PROMPTS_FILE, MANIFEST_FILE})}


def prepare_out_dir(out_dir: str | Path, *, overwrite: bool, option: str = "--out") -> tuple[str, ...]:
    """Make sure ``out_dir`` holds nothing from an earlier run; returns the other files left in it.

    A missing or empty folder is fine. A non-empty one raises :class:`UsageError`
    (exit 4) naming ``--overwrite``, unless ``overwrite`` is set: then every file
    cbpt-guard writes there (the reports, ``classifier.onnx``, ``purified/`` and
    the writers' temporary files) is removed, and what is left is returned so
    that the caller can say so.
    """
    folder = Path(out_dir)
    if not folder.exists():
        return ()
    if not folder.is_dir():
        raise UsageError(f"{option} {folder}: is a file, not a folder")
    entries = sorted(folder.iterdir())
    if not entries:
        return ()
    if not overwrite:
        listed = ", ".join(entry.name for entry in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(f"{option} {folder} is not empty ({listed}): choose a new or empty folder, or pass "
                         "--overwrite to replace cbpt-guard's own files there (other files are kept)")
    files, folders = tool_files()
    left: list[str] = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink() and entry.name in folders:
            left += [f"{entry.name}/{name}" for name in _clear(entry, folders[entry.name])]
        elif _is_tool_file(entry, files):
            entry.unlink()
        else:
            left.append(entry.name + ("/" if entry.is_dir() else ""))
    return tuple(left)


def prepare_run_out_dir(out_dir: str | Path | None, *, overwrite: bool, policy: str, probes: str | Path | None,
                        data: str | Path | None) -> None:
    """Ready ``check``'s or ``purify``'s output folder, after the cheap checks that could still refuse the run.

    The policy and the image folders are validated first, so a run that would
    end in a usage or policy error (exit 4) clears nothing of a previous run.
    The files ``--overwrite`` keeps (not cbpt-guard's) are named on stderr.
    """
    import click

    from cbpt_guard.policy.load import resolve_policy
    from cbpt_guard.user_images import check_folders

    if out_dir is None:
        return
    resolve_policy(policy)
    check_folders(probes, data)
    kept = prepare_out_dir(out_dir, overwrite=overwrite)
    if kept:
        click.echo(f"note: --overwrite kept {len(kept)} file(s) cbpt-guard did not write in {out_dir}: "
                   f"{', '.join(kept)}", err=True)


def prepare_out_file(out_path: str | Path, *, overwrite: bool, option: str = "--out") -> None:
    """Refuse to replace an existing file unless ``overwrite``; with it, remove the old file before any work.

    Removing it first means an export that then fails leaves no file behind,
    rather than the previous run's file under the name the new run was given.
    """
    path = Path(out_path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    if not overwrite:
        raise UsageError(f"{option} {path} already exists: choose another name, or pass --overwrite to replace it")
    path.unlink()


def _clear(folder: Path, names: frozenset[str]) -> list[str]:
    """Remove the tool's own files from ``folder`` (and the folder if that empties it); return what was kept."""
    kept = []
    for entry in sorted(folder.iterdir()):
        if _is_tool_file(entry, names):
            entry.unlink()
        else:
            kept.append(entry.name + ("/" if entry.is_dir() else ""))
    if not kept:
        folder.rmdir()
    return kept


def _is_tool_file(entry: Path, names: frozenset[str]) -> bool:
    if entry.is_dir() and not entry.is_symlink():
        return False
    if entry.name in names:
        return True
    return entry.name.endswith(_TEMPORARY_SUFFIXES) and any(entry.name.startswith(f".{name}.") for name in names)
