"""``cbpt-guard export``: write the (purified) classifier of a checkpoint as a parity-checked ONNX file."""

from __future__ import annotations

import json
import re

import click

from cbpt_guard.cli.device_option import device_option
from cbpt_guard.cli.outdir import prepare_out_file

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@click.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=str))
@click.option("--prompts", "prompts_path", type=click.Path(path_type=str),
              help="Purified prompts (folder or prompts.safetensors from purification). "
                   "Without it: the unpurified classifier with the manifest's hand-written prompts.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The .onnx file to write (refused if it exists, unless --overwrite).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file; it is removed first, so a failed export leaves none.")
@click.option("--fp16", is_flag=True, help="Half-precision weights and arithmetic (for GPUs); float32 in and out.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True),
              help="Largest absolute logit difference allowed (default: 1e-4, or 5e-3 x logit scale with --fp16).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=str),
              help="Folder of real images for the parity check (default: procedural probes).")
@click.option("--policy-sha256", metavar="HEX", help="The policy's digest, recorded in the file's provenance.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the parity images.")
@click.option("--json", "as_json", is_flag=True, help="Print the export result as JSON.")
@click.option("--arch", metavar="NAME", help="open_clip architecture of a single weights file.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, path_type=str),
              help="Class names file; overrides the directory's manifest.")
@device_option(policy=False)
def export_command(model_path, prompts_path, out_path, overwrite, fp16, tolerance, images_dir, policy_sha256, seed,
                   as_json, arch, classes_file, device):
    """Export MODEL's zero-shot classifier to ONNX and check it against PyTorch.

    The graph takes pixels in [0, 1] (N, 3, S, S) and returns logits (N, C);
    classes, image size, mean/std and provenance are in its metadata. A failed
    parity check leaves no file and exits 3.
    """
    from cbpt_guard.errors import UsageError

    if policy_sha256 is not None and not _DIGEST.match(policy_sha256):
        raise UsageError("--policy-sha256 must be 64 lower-case hex digits")
    prepare_out_file(out_path, overwrite=overwrite)
    result = run_export(model_path, prompts_path=prompts_path, out_path=out_path, fp16=fp16, tolerance=tolerance,
                        images_dir=images_dir, policy_sha256=policy_sha256, seed=seed, arch=arch,
                        classes_file=classes_file, device=device)
    click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) if as_json
               else format_result(result))


def run_export(model_path, *, prompts_path, out_path, fp16, tolerance, images_dir, policy_sha256, seed, arch,
               classes_file, device=None):
    """Load the checkpoint (and prompts), build the classifier on ``device``, and export it; returns the ExportResult.

    The trace and the PyTorch side of the parity check run in float32 (no
    autocast, no TF32) wherever the model is.
    """
    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.device import resolve
    from cbpt_guard.export import export_classifier
    from cbpt_guard.intake import load_checkpoint

    where = resolve(device).torch()
    loaded = load_checkpoint(model_path, arch=arch, classes_file=classes_file)
    loaded.model.to(where)
    report = loaded.report
    provenance = {"source_checkpoint_sha256": report.checkpoint_sha256}
    if policy_sha256:
        provenance["policy_sha256"] = policy_sha256
    if prompts_path:
        from cbpt_guard.purify.artifacts import load_prompts, purified_classifier

        prompts = load_prompts(prompts_path)
        classes = tuple(report.classes) if report.classes is not None else prompts.classes
        classifier = purified_classifier(loaded.model, prompts, checkpoint_digest=report.checkpoint_sha256,
                                         classes=classes)
        provenance["prompts_sha256"] = prompts.sha256
    else:
        classes = report.require_classes(model_path)
        classifier = build_classifier(loaded.model, classes, report.templates)
        provenance["prompts_sha256"] = "hand-written"
    images = None
    if images_dir:
        from cbpt_guard.probes import folder_probes

        images = folder_probes(images_dir, report.image_size[0], seed=seed).images
    return export_classifier(classifier, out_path, classes=classes, provenance=provenance, fp16=fp16,
                             tolerance=tolerance, parity_images=images, seed=seed)


def format_result(result) -> str:
    """Plain-text summary of an ExportResult."""
    kind = "purified" if result.purified else "unpurified (hand-written prompts)"
    return "\n".join([
        f"wrote {result.path} ({kind}, {'fp16' if result.fp16 else 'fp32'})",
        f"sha256 {result.sha256}",
        f"parity via {result.provider} on {result.images_compared} images: max |diff| {result.max_abs_diff:.3g} "
        f"(tolerance {result.tolerance:.3g}), max rel {result.max_rel_diff:.3g}, "
        f"top-1 agreement {100 * result.top1_agreement:.1f}%",
    ])
