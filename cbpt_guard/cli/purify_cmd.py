"""``cbpt-guard purify``: class-wise prompt tuning against detection's dummy triggers, then verification."""

from __future__ import annotations

import click

from cbpt_guard.cli.device_option import device_option
from cbpt_guard.cli.outdir import OVERWRITE_HELP, prepare_run_out_dir
from cbpt_guard.cli.progress import progress_printer


@click.command("purify")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Labelled few-shot ImageFolder; without it the model's own predictions on probes are the labels.")
@click.option("--probes", "probes_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Unlabelled images for detection (and for zero-shot purification without --data).")
@click.option("--shots", type=click.IntRange(1, 16), help="Labelled images per class to tune on (policy default).")
@click.option("--policy", default="strict", show_default=True, metavar="NAME|FILE",
              help="Where budgets, CBPT settings and verification bars come from.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write the learned prompts (prompts.safetensors + prompts.json) under DIR/purified "
                   "(DIR new or empty).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--arch", metavar="NAME")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the purification record as JSON.")
@device_option(policy=True)
def purify_command(path, data_dir, probes_dir, shots, policy, out_dir, overwrite, classes_file, arch, seed, as_json,
                   device):
    """Purify the checkpoint at PATH by class-wise prompt tuning; no weight changes.

    Detection runs first and supplies the dummy triggers; the purified
    classifier is then verified (accuracy, dummy-trigger ASR, a fresh
    detection run). Exit 0 when the policy's bars are met, 1 when not.
    """
    from cbpt_guard.pipeline import purify_checkpoint

    prepare_run_out_dir(out_dir, overwrite=overwrite, policy=policy, probes=probes_dir, data=data_dir)
    info = purify_checkpoint(path, data=data_dir, probes=probes_dir, policy=policy, shots=shots, out_dir=out_dir,
                             classes_file=classes_file, arch=arch, seed=seed, progress=progress_printer(),
                             device=device)
    if info is None:
        raise click.ClickException("nothing to purify: detection did not run")
    if as_json:
        click.echo(info.model_dump_json(indent=2))
    else:
        accuracy = "CA" if info.after.clean_accuracy is not None else "agreement"
        for label, metrics in (("before", info.before), ("after", info.after)):
            value = metrics.clean_accuracy if metrics.clean_accuracy is not None else metrics.agreement
            asr = ", ".join(f"{family} {rate:.1%}" for family, rate in metrics.dummy_asr.items()) or "none"
            click.echo(f"{label:<6} {accuracy} {value:.1%}; dummy-trigger ASR: {asr}")
        click.echo(f"re-detection (seed {info.recheck_seed}): {info.recheck_outcome} (score {info.recheck_score:.3f})")
        click.echo(f"bars {'met' if info.bars_met else 'missed: ' + '; '.join(info.misses)}")
        if info.prompts_path:
            click.echo(f"prompts: {out_dir}/{info.prompts_path}")
    raise click.exceptions.Exit(0 if info.bars_met else 1)
