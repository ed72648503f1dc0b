"""``cbpt-guard inspect``: load a checkpoint safely and describe it."""

from __future__ import annotations

import click


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--arch", metavar="NAME", help="open_clip architecture of a single weights file (e.g. ViT-B-32).")
@click.option("--classes", "classes_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Class names (one per line, a JSON list, or a manifest); overrides the directory's manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(path: str, arch: str | None, classes_file: str | None, as_json: bool) -> None:
    """Load PATH without executing anything in it, hash every file, and describe the model.

    PATH is an open_clip model directory (open_clip_config.json + weights), a
    transformers CLIP directory (config.json + model.safetensors), or a single
    weights file with --arch. Unsafe pickles are refused (exit 1); a directory
    with nothing scannable is inconclusive (exit 3).
    """
    from cbpt_guard.intake import inspect_checkpoint

    report = inspect_checkpoint(path, arch=arch, classes_file=classes_file)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    click.echo(format_report(report))


def format_report(report) -> str:
    """A plain-text description of a :class:`CheckpointReport`, one fact per line."""
    classes = "none given (add cbpt_manifest.json or pass --classes)"
    if report.classes is not None:
        shown = ", ".join(report.classes[:8]) + (f", ... ({report.class_count - 8} more)" if report.class_count > 8
                                                 else "")
        classes = f"{report.class_count} from {report.classes_source}: {shown}"
    lines = [
        f"checkpoint     {report.source}",
        f"layout         {report.layout}",
        f"architecture   {report.architecture} ({report.model_class}, vision tower {report.vision_tower})",
        f"sha256         {report.checkpoint_sha256}",
        f"parameters     {report.parameter_count:,} in {report.tensor_count} tensors",
        f"dtypes         {', '.join(f'{k} x{v}' for k, v in report.dtypes.items())}",
        f"image size     {report.image_size[0]}x{report.image_size[1]}",
        f"context length {report.context_length}",
        f"embed dim      {report.embed_dim}",
        f"classes        {classes}",
        f"templates      {len(report.templates)}: {report.templates[0]!r}{' ...' if len(report.templates) > 1 else ''}",
        "files:",
    ]
    lines += [f"  {f.role:<8} {f.kind:<11} {f.size:>12,} B  sha256:{f.sha256}  {f.path}"
              + (f"  ({f.note})" if f.note else "") for f in report.files]
    if report.skipped:
        lines.append("skipped:")
        lines += [f"  {s.path}: {s.reason}" for s in report.skipped]
    return "\n".join(lines)
