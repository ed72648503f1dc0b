"""``cbpt-guard check``: the whole gate in one command, ending in an exit code a pipeline can gate on."""

from __future__ import annotations

import click

from cbpt_guard.cli.device_option import device_option
from cbpt_guard.cli.outdir import OVERWRITE_HELP, prepare_run_out_dir
from cbpt_guard.cli.progress import progress_printer
from cbpt_guard.policy.schema import Mode

_SYMBOL = {"pass": "PASS", "purified": "PURIFIED", "purify": "PURIFY", "inconclusive": "INCONCLUSIVE",
           "block": "BLOCK"}


@click.command("check")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--policy", default="strict", show_default=True, metavar="NAME|FILE",
              help="A ready policy (strict, balanced, permissive) or a policy YAML file.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write the reports (HTML, JSON, Markdown, SARIF), purified prompts and ONNX export here "
                   "(a new or empty folder). Without it nothing is written.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--mode", type=click.Choice([m.value for m in Mode]),
              help="Replace the policy's mode for this run (recorded in the Verdict beside the policy's).")
@click.option("--probes", "probes_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Unlabelled images to probe with (the unlabelled tier).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Labelled few-shot ImageFolder (subfolders named after classes) for purification.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Class names file; overrides the model directory's manifest.")
@click.option("--arch", metavar="NAME", help="open_clip architecture of a single weights file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice in the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the Verdict as JSON instead of a summary.")
@device_option(policy=True)
def check_command(path, policy, out_dir, overwrite, mode, probes_dir, data_dir, classes_file, arch, seed, as_json,
                  device):
    """Check the checkpoint at PATH under a policy: detect, decide, purify, verify, export, report.

    \b
    Exit codes: 0 pass (no evidence, or purified and verified: then deploy the
    purified classifier, not the original; a policy may fail on purified with
    decision.fail_on; warn and dry-run modes always pass a complete run),
    1 blocked, 2 internal error,
    3 inconclusive (a required step skipped or failed), 4 usage or policy error,
    130 interrupted.
    """
    from cbpt_guard.pipeline import check

    prepare_run_out_dir(out_dir, overwrite=overwrite, policy=policy, probes=probes_dir, data=data_dir)
    verdict = check(path, policy=policy, out_dir=out_dir, probes=probes_dir, data=data_dir,
                    classes_file=classes_file, arch=arch, seed=seed, progress=progress_printer(),
                    mode=mode, device=device)
    click.echo(verdict.to_json() if as_json else format_verdict(verdict))
    if out_dir is None:
        click.echo(NOTHING_WRITTEN, err=True)
    raise click.exceptions.Exit(verdict.decision.exit_code)


NOTHING_WRITTEN = ("note: nothing was written (no --out): no report, Verdict JSON, purified prompts or ONNX export; "
                   "run again with --out DIR to keep them")
"""Said after every run without ``--out``, on stderr so that ``--json`` output stays clean.

Without an output folder the run is still a complete gate (its exit code and
its summary or JSON Verdict on stdout), so no folder is made up behind the
caller's back; but a reader must not look for a report that was never written,
nor read "skipped: export" as a problem of the model.
"""


def format_verdict(verdict) -> str:
    """A terminal summary of a Verdict: the decision first, then why, then where the reports are."""
    from cbpt_guard.report import text

    decision = verdict.decision
    mode = decision.mode
    if verdict.policy.mode_override is not None and verdict.policy.mode_override != verdict.policy.mode:
        mode += f", set by --mode; the policy says {verdict.policy.mode}"
    head = f"{_SYMBOL[decision.action]}: {verdict.checkpoint.path} under policy {verdict.policy.name} ({mode})"
    if decision.enforced != decision.action:
        head += f"; enforce would: {decision.enforced}"
    if decision.action == "purified":
        head += f": {text.PURIFIED_ADVICE}"
    lines = [head]
    lines += [f"  - {reason}" for reason in decision.reasons]
    if verdict.detection:
        d = verdict.detection
        target = f", suspected target {d.suspected_target!r}" if d.suspected_target else ""
        lines.append(f"detection: {d.outcome} (score {text.score(d.score)}, threshold {text.score(d.threshold)}"
                     f"{target})")
        if d.uncalibrated:
            lines.append(f"{text.UNCALIBRATED}: {text.reference_free(d) or 'no reference-free score'} decides")
    if verdict.purification:
        p = verdict.purification
        before, after = p.before, p.after
        accuracy = "CA" if after.clean_accuracy is not None else "agreement"
        a_before = before.clean_accuracy if before.clean_accuracy is not None else before.agreement
        a_after = after.clean_accuracy if after.clean_accuracy is not None else after.agreement
        asr = "; ".join(f"{row.label()} {text.pct(row.before)} -> {text.pct(row.after)}"
                        for row in text.dummy_asr_rows(verdict)) or "none"
        lines.append(f"purification ({p.tier}): {accuracy} {a_before:.1%} -> {a_after:.1%}; dummy-trigger ASR: "
                     f"{asr}; re-detection: {p.recheck_outcome}; bars {'met' if p.bars_met else 'missed'}")
    if verdict.export:
        e = verdict.export
        lines.append(f"export: {'parity ok' if e.passed else 'FAILED'} ({e.path or e.error}; provider "
                     f"{e.provider}, max |diff| {e.max_abs_diff})")
    for step in verdict.steps:
        if step.state in ("skipped", "failed"):
            lines.append(f"{step.state}: {step.name}: {step.reason}")
    for role, name in sorted(verdict.artefacts.items()):
        lines.append(f"{role}: {name}")
    lines.append(f"exit {decision.exit_code}")
    return "\n".join(lines)
