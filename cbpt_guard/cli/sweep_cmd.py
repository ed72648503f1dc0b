"""``cbpt-guard sweep``: every checkpoint of a folder tree, list, hub mirror or MLflow registry, on Ray, one report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from cbpt_guard.errors import UsageError
from cbpt_guard.policy.schema import Mode

_SYMBOL = {"pass": "PASS", "purified": "PURIFIED", "purify": "PURIFY", "inconclusive": "INCONCLUSIVE",
           "block": "BLOCK"}
STORE_DIR = "store"


@click.command("sweep")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--policy", default="strict", show_default=True, metavar="NAME|FILE",
              help="A ready policy (strict, balanced, permissive) or a policy YAML file; its `sweep:` section sets "
                   "each model's GPU share and its time and memory budgets.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="The sweep's folder: index.html, results.jsonl, summary.md, results.sarif, and the store that a "
                   "later sweep into the same folder resumes from (a new or empty folder, or an earlier sweep's).")
@click.option("--address", metavar="ADDRESS",
              help="Join this Ray cluster (e.g. ray://head:10001 or head:6379, or 'auto'); without it a local Ray "
                   "uses this machine's cores and GPUs.")
@click.option("--cpus", type=click.IntRange(min=1), help="CPUs of the local Ray (default: all of this machine's).")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs of the local Ray (default: all it finds).")
@click.option("--runtime-env", metavar="JSON|FILE",
              help="A Ray runtime environment (JSON text or a JSON file) for the sweep's workers, e.g. env_vars.")
@click.option("--tracking-uri", metavar="URI", help="MLflow tracking URI for models:/ sources "
                                                    "(default: $MLFLOW_TRACKING_URI).")
@click.option("--mode", type=click.Choice([m.value for m in Mode]),
              help="Replace the policy's mode for every model (recorded in each Verdict).")
@click.option("--probes", "probes_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Unlabelled images to probe with (every worker must be able to read them).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Labelled few-shot ImageFolder for purification (every worker must be able to read it).")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Class names file for every model; overrides their manifests.")
@click.option("--arch", metavar="NAME", help="open_clip architecture of loose weights files.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every check.")
@click.option("--retry-failed", is_flag=True,
              help="Check again the models an earlier sweep recorded as failed (a worker died twice, a budget ran "
                   "out); without it their failed records are reused.")
def sweep_command(sources, policy, out_dir, address, cpus, gpus, runtime_env, tracking_uri, mode, probes_dir,
                  data_dir, classes_file, arch, seed, retry_failed):
    """Check every checkpoint SOURCE names, on Ray, and write one report.

    \b
    SOURCE is a folder (every model directory and loose weights file in it),
    list:FILE or a .txt file (one path per line), hub:DIR (a hub mirror laid
    out as org/name/revision/), models:/NAME[/VERSION|@ALIAS] (MLflow registry
    versions) or mlflow:TRACKING_URI (every registered model there).

    \b
    Exit code: the worst decision of any model (1 blocked, then 2 tool error,
    then 3 inconclusive, else 0), 4 for a usage or policy error.
    """
    from cbpt_guard.sweeper.engine import RayOptions, run_sweep

    _check_out_dir(Path(out_dir))
    options = RayOptions(address=address, num_cpus=cpus, num_gpus=gpus, runtime_env=_runtime_env(runtime_env))
    printer = SweepPrinter()
    result = run_sweep(list(sources), policy=policy, out_dir=out_dir, ray_options=options, data=data_dir,
                       probes=probes_dir, classes_file=classes_file, arch=arch, seed=seed, mode=mode,
                       tracking_uri=tracking_uri, retry_failed=retry_failed, progress=printer)
    printer.close()
    for line in format_sweep(result):
        click.echo(line)
    raise click.exceptions.Exit(result.exit_code)


def _check_out_dir(folder: Path) -> None:
    """A new or empty folder, or one an earlier sweep wrote (it has a store): never another tool's folder."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"--out {folder}: is a file, not a folder")
    if any(folder.iterdir()) and not (folder / STORE_DIR).is_dir():
        raise UsageError(f"--out {folder} is neither empty nor an earlier sweep's folder (no {STORE_DIR}/ in it): "
                         "choose a new or empty folder")


def _runtime_env(text: str | None) -> dict | None:
    if text is None:
        return None
    path = Path(text)
    try:
        value = json.loads(path.read_text(encoding="utf-8") if not text.lstrip().startswith("{") and path.is_file()
                           else text)
    except (OSError, ValueError) as error:
        raise UsageError(f"--runtime-env: not JSON text or a JSON file: {error}") from None
    if not isinstance(value, dict):
        raise UsageError("--runtime-env: must be a JSON object")
    return value


def format_sweep(result) -> list[str]:
    """The lines printed after a sweep: one per blocked or failed model, the counts, and where the reports are."""
    lines = []
    for r in result.results:
        if r.exit_code != 0 or r.status == "failed":
            lines.append(f"{_SYMBOL.get(r.action, r.action.upper())}: {r.name}: {r.reasons[0] if r.reasons else ''}")
    counts: dict[str, int] = {}
    for r in result.results:
        counts[r.action] = counts.get(r.action, 0) + 1
    tally = ", ".join(f"{action} {count}" for action, count in sorted(counts.items()))
    lines.append(f"{len(result.results)} models ({tally}); {result.scanned} checked, {result.reused} reused, "
                 f"{result.failed} failed; exit {result.exit_code}")
    lines.append(f"report: {Path(result.out_dir) / result.files.get('html', 'index.html')}")
    return lines


class SweepPrinter:
    """Progress of a sweep: a bar rewritten in place on a terminal, plain lines in a CI log.

    In a log a line is written when the counts change, at most every 10 s (and
    the last one always), so a log's length does not grow with the sweep's duration.
    """

    CI_PERIOD_S = 10.0
    WIDTH = 24

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.last_text = ""
        self.last_time = 0.0
        self.pending = None
        self.open = False

    def __call__(self, counts) -> None:
        """Show one :class:`~cbpt_guard.sweeper.records.StageCounts`."""
        text = str(counts)
        if self.tty:
            done = counts.intake_done + counts.detection_done
            total = max(1, counts.intake_total + counts.detection_total)
            filled = self.WIDTH * done // total
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {text}\033[K")
            self.open = True
            self.stream.flush()
            return
        core = text.split(";")[:-1]  # the counts, without the clock
        now = time.monotonic()
        if core != self.last_text.split(";")[:-1] and now - self.last_time >= self.CI_PERIOD_S:
            self._line(text, now)
        else:
            self.pending = text

    def _line(self, text: str, now: float) -> None:
        self.stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()
        self.last_text, self.last_time, self.pending = text, now, None

    def close(self) -> None:
        """End the in-place line, or print the last counts a CI log has not seen yet."""
        if self.tty and self.open:
            self.stream.write("\n")
        elif not self.tty and self.pending is not None and self.pending != self.last_text:
            self._line(self.pending, time.monotonic())
        self.stream.flush()
