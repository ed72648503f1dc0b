"""``cbpt-guard report``: render a saved Verdict again, as HTML, Markdown, SARIF or JSON."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("verdict_file", metavar="VERDICT.json", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(["html", "md", "sarif", "json"], case_sensitive=False),
              default="html", show_default=True, help="Report format.")
@click.option("--out", "out", metavar="FILE", type=click.Path(dir_okay=False, path_type=str),
              help="Write the report to FILE instead of standard output.")
@click.option("--repo-root", metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="SARIF only: make the checkpoint's location relative to this folder (default: the Actions "
                   "workspace or git top-level holding it, else the current folder).")
@click.option("--absolute-paths", is_flag=True,
              help="SARIF only: locate the checkpoint by an absolute file:// URI instead of a repository path.")
def report_command(verdict_file: str, fmt: str, out: str | None, repo_root: str | None,
                   absolute_paths: bool) -> None:
    """Render VERDICT.json (written by `cbpt-guard check`) in another format.

    The report is rebuilt from the saved Verdict alone, so it shows exactly
    what the run recorded; nothing is run again. A file that is not a Verdict,
    or one written by an incompatible version, is a usage error (exit 4).
    """
    from pathlib import Path

    from cbpt_guard.errors import UsageError
    from cbpt_guard.report import read_verdict, render

    content = render(read_verdict(verdict_file), fmt, repo_root=repo_root, absolute_paths=absolute_paths)
    if out is None:
        click.echo(content, nl=False)
        return
    try:
        Path(out).write_text(content, encoding="utf-8", newline="\n")
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error.strerror or error}") from None
    click.echo(f"wrote {out}", err=True)
