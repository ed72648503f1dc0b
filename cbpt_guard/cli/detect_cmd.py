"""``cbpt-guard detect`` and ``cbpt-guard calibrate``: zero-shot backdoor detection from the command line."""

from __future__ import annotations

import click

from cbpt_guard.cli.device_option import device_option
from cbpt_guard.cli.progress import progress_printer
from cbpt_guard.errors import ExitCode


def budget_options(command):
    """The detection budget flags shared by detect and calibrate."""
    command = click.option("--steps", type=click.IntRange(1), help="Inversion steps per trigger family.")(command)
    command = click.option("--n-probes", "probe_count", type=click.IntRange(8),
                           help="Number of probe images.")(command)
    command = click.option("--families", help="Comma-separated trigger families (patch,additive,warp).")(command)
    command = click.option("--batch-size", type=click.IntRange(1), help="Probe images per inversion step.")(command)
    command = click.option("--time-limit", type=click.FloatRange(0, min_open=True),
                           help="Seconds the whole run may take (default 3600); past it the run stops, "
                                "inconclusive. Never changes a result.")(command)
    command = click.option("--anomaly-steps", type=click.IntRange(0),
                           help="Per-class anomaly steps (0: skip).")(command)
    command = click.option("--targeted", "targeted_classes", type=click.IntRange(0),
                           help="Classes the targeted patch inversion is aimed at (0: skip).")(command)
    command = click.option("--anomaly-classes", type=click.IntRange(4),
                           help="Classes the per-class anomaly searches (default 32); above it, a screen picks "
                                "them.")(command)
    return command


def make_budget(steps, probe_count, families, time_limit, anomaly_steps, targeted_classes, batch_size=None,
                anomaly_classes=None):
    """A DetectBudget from the flags, defaults where a flag is absent."""
    from dataclasses import replace

    from cbpt_guard.detect.budget import DetectBudget
    from cbpt_guard.errors import UsageError
    from cbpt_guard.triggers import FAMILIES

    budget = DetectBudget()
    if families:
        names = tuple(f.strip() for f in families.split(",") if f.strip())
        unknown = [f for f in names if f not in FAMILIES]
        if unknown or not names:
            raise UsageError(f"unknown trigger families {unknown}; known: {', '.join(FAMILIES)}")
        budget = replace(budget, families=names)
    if probe_count:
        budget = replace(budget, probes=probe_count)
    if anomaly_steps is not None:
        budget = replace(budget, anomaly_steps=anomaly_steps)
    if targeted_classes is not None:
        budget = replace(budget, targeted_classes=targeted_classes)
    if anomaly_classes is not None:
        budget = replace(budget, anomaly_classes=anomaly_classes)
    if time_limit:
        budget = replace(budget, time_limit_s=time_limit)
    inversion = budget.inversion
    if steps:
        inversion = replace(inversion, steps=steps)
    if batch_size:
        inversion = replace(inversion, batch_size=batch_size)
    return replace(budget, inversion=inversion)


@click.command("detect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--arch", metavar="NAME", help="open_clip architecture of a single weights file.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="Class names file.")
@click.option("--probes", "probes_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Unlabelled images to probe with (as check's and purify's --probes; --n-probes sets how many).")
@click.option("--calibration", type=click.Path(dir_okay=False), help="Calibration file (default: built-in).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the detection report as JSON.")
@device_option(policy=False)
@budget_options
def detect_command(path, arch, classes_file, probes_dir, calibration, seed, as_json, device, steps, probe_count,
                   families, batch_size, time_limit, anomaly_steps, targeted_classes, anomaly_classes):
    """Look for a backdoor in PATH without labelled data.

    Exit 0 when no evidence was found, 1 when backdoor evidence was found,
    3 when the run was inconclusive: something was skipped, the run went past
    its time limit, or the calibration was fitted at another budget (the
    message gives the command that fits one for this budget).
    """
    from cbpt_guard.detect.api import detect_checkpoint
    from cbpt_guard.detect.outcome import Outcome

    budget = make_budget(steps, probe_count, families, time_limit, anomaly_steps, targeted_classes, batch_size,
                         anomaly_classes)
    report = detect_checkpoint(path, arch=arch, classes_file=classes_file, probes_dir=probes_dir,
                               calibration_path=calibration, budget=budget, seed=seed, progress=progress_printer(),
                               device=device)
    click.echo(report.model_dump_json(indent=2) if as_json else format_detection(report))
    code = {Outcome.FOUND: ExitCode.BLOCKED, Outcome.INCONCLUSIVE: ExitCode.INCONCLUSIVE,
            Outcome.NOT_FOUND: ExitCode.PASS}
    raise click.exceptions.Exit(int(code[report.outcome]))


def format_detection(report) -> str:
    """Plain-text summary of a DetectionReport."""
    lines = [f"{report.outcome} (score {report.score:.3f}, threshold {report.threshold:.3f})"]
    if report.suspected_target:
        lines.append(f"suspected target class: {report.suspected_target}")
    if report.uncalibrated:
        lines.append(report.uncalibrated)
    if report.reference_free:
        free = report.reference_free
        state = "none" if free["score"] is None else f"{free['score']:.2f} toward {free['target']!r}"
        lines.append(f"reference-free score: {state} ({'conclusive' if free['found'] else 'not conclusive'}; "
                     f"{free['note']})")
    lines.append(f"probes: {report.probe_count} ({report.probe_tier}); seed {report.seed}; {report.seconds:.1f} s")
    for f in report.families:
        state = "collapsed" if f.collapsed else "no collapse"
        lines.append(f"  {f.family:<9} {state:<11} size {f.size:.4f}  -> {f.target!r} concentration "
                     f"{f.concentration:.2f}, inverted ASR {f.inverted_asr:.2f}, "
                     f"z {f.z if f.z is None else round(f.z, 2)}")
    if report.anomaly:
        lines.append(f"  anomaly   suspect {report.anomaly.suspect!r} index {report.anomaly.anomaly_index:.2f}")
    for what, why in report.skipped:
        lines.append(f"  skipped {what}: {why}")
    return "\n".join(lines)


@click.command("calibrate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Calibration file to write.")
@click.option("--seed", default=0, show_default=True, type=int)
@device_option(policy=False)
@budget_options
def calibrate_command(paths, out_path, seed, device, steps, probe_count, families, batch_size, time_limit,
                      anomaly_steps, targeted_classes, anomaly_classes):
    """Run the detector over clean reference models PATHS and write the calibration file.

    The file records the budget (every flag but --time-limit): detection and
    policies use it only at that same budget. It also records the model family
    (architecture, image size, embedding width, class list) and each reference's
    weights digest: a model of another family is scored reference-free and
    reported as uncalibrated for its family. All PATHS must be of one family.
    """
    from pathlib import Path

    from cbpt_guard.detect.api import calibrate_models

    budget = make_budget(steps, probe_count, families, time_limit, anomaly_steps, targeted_classes, batch_size,
                         anomaly_classes)
    calibration = calibrate_models(list(paths), budget=budget, seed=seed, progress=progress_printer(), device=device)
    Path(out_path).write_text(calibration.to_json())
    family = calibration.domain
    click.echo(f"wrote {out_path}: {len(calibration.references)} clean references, "
               f"threshold {calibration.threshold:.4f}; family {family.architecture}, {family.image_size} px, "
               f"embedding width {family.embed_dim}, {family.class_count} classes")
