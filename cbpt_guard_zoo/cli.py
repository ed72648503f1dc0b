"""``cbpt-guard zoo``: train the model zoo (clean base, clean twins, backdoored variants), measure it, write its images.

This group reaches ``cbpt-guard`` through the ``cbpt_guard.commands`` entry
point that pyproject.toml registers (the product never imports this package).
Importing this module checks that the ``zoo`` extra's dependencies are
installed, so that without them the CLI says how to install them instead of
failing half-way through a build.
"""

from __future__ import annotations

import importlib.util
import time

import click

from cbpt_guard.cli.progress import progress_printer

ALL = "all"
EXTRA_MODULES = ("sklearn",)
"""The modules the ``zoo`` extra installs (pyproject.toml): scikit-learn's bundled handwritten digits."""


def _require_extra() -> None:
    """Raise ModuleNotFoundError, naming the module, when a dependency of the ``zoo`` extra is missing."""
    for module in EXTRA_MODULES:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


_require_extra()


@click.group("zoo")
def zoo_group() -> None:
    """Build the zoo of small, really trained and really backdoored open_clip models."""


@zoo_group.command("build")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Zoo directory.")
@click.option("--config", default="vit", show_default=True, type=click.Choice(["vit", "resnet", "vit-tiny"]))
@click.option("--attacks", default=ALL, show_default=True, help="Comma-separated attack names, or 'all'.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(0, 50), help="Backdoored seeds per attack.")
@click.option("--clean", default=6, show_default=True, type=click.IntRange(0, 50), help="Clean twins.")
@click.option("--base-steps", type=click.IntRange(1), help="Override the base's training steps.")
@click.option("--finetune-steps", type=click.IntRange(1), help="Override each variant's fine-tuning steps.")
@click.option("--report-dir", type=click.Path(file_okay=False),
              help="Write ZOO.md and results/zoo.json here (e.g. benchmarks).")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="torch CPU threads.")
def build_command(out_dir: str, config: str, attacks: str, seeds: int, clean: int, base_steps: int | None,
                  finetune_steps: int | None, report_dir: str | None, threads: int) -> None:
    """Build (or resume) a zoo under OUT; models already built are skipped."""
    from dataclasses import replace
    from pathlib import Path

    import torch

    from cbpt_guard.errors import UsageError
    from cbpt_guard_zoo import attacks as attack_lib
    from cbpt_guard_zoo.build import CLASSES, ZooRecipe, build_zoo
    from cbpt_guard_zoo.report import summarise, write_reports

    torch.set_num_threads(threads)
    names = sorted(attack_lib.ATTACKS) if attacks == ALL else [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in attack_lib.ATTACKS]
    if unknown:
        raise UsageError(f"unknown attack(s) {unknown}; known: {', '.join(sorted(attack_lib.ATTACKS))}")
    recipe = ZooRecipe(config=config)
    if base_steps:
        recipe = replace(recipe, base=replace(recipe.base, steps=base_steps))
    if finetune_steps:
        recipe = replace(recipe, finetune=replace(recipe.finetune, steps=finetune_steps))
    started = time.perf_counter()
    truths = build_zoo(Path(out_dir), recipe, names, seeds, clean, progress=progress_printer())
    if report_dir:
        summary = summarise(truths, len(CLASSES), round(time.perf_counter() - started, 1))
        command = (f"cbpt-guard zoo build --out {out_dir} --config {config} --attacks {attacks} --seeds {seeds} "
                   f"--clean {clean} --report-dir {report_dir}"
                   + (f" --base-steps {base_steps}" if base_steps else "")
                   + (f" --finetune-steps {finetune_steps}" if finetune_steps else ""))
        json_path, markdown_path = report_paths(Path(report_dir), config)
        write_reports(summary, json_path, markdown_path, command)
        click.echo(f"wrote {markdown_path} and {json_path}")


@zoo_group.command("measure")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, exists=True), help="Zoo directory.")
@click.option("--config", default="vit", show_default=True, type=click.Choice(["vit", "resnet", "vit-tiny"]))
@click.option("--report-dir", type=click.Path(file_okay=False), help="Rewrite ZOO.md and results/zoo.json here.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="torch CPU threads.")
def measure_command(out_dir: str, config: str, report_dir: str | None, threads: int) -> None:
    """Measure every built model of a zoo again from its saved weights (no training)."""
    from pathlib import Path

    import torch

    from cbpt_guard_zoo.build import CLASSES, ZooRecipe, read_truths, remeasure
    from cbpt_guard_zoo.report import summarise, write_reports

    torch.set_num_threads(threads)
    truths = read_truths(Path(out_dir), config)
    if not truths:
        from cbpt_guard.errors import NothingScannableError

        raise NothingScannableError(f"{out_dir}/{config}: no built models to measure")
    recipe = ZooRecipe.from_dict(truths[0]["recipe"])
    truths = remeasure(Path(out_dir), recipe, progress=progress_printer())
    if report_dir:
        summary = summarise(truths, len(CLASSES), None)
        json_path, markdown_path = report_paths(Path(report_dir), config)
        write_reports(summary, json_path, markdown_path,
                      f"cbpt-guard zoo measure --out {out_dir} --config {config} --report-dir {report_dir}")
        click.echo(f"wrote {markdown_path} and {json_path}")


def report_paths(report_dir, config: str):
    """(results json, markdown) for a config: ZOO.md for the main ViT zoo, ZOO-<config>.md otherwise."""
    suffix = "" if config == "vit" else f"-{config}"
    return report_dir / "results" / f"zoo{suffix}.json", report_dir / f"ZOO{suffix}.md"


@zoo_group.command("images")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="ImageFolder to create.")
@click.option("--per-class", default=40, show_default=True, type=click.IntRange(1, 54), help="Images per class.")
@click.option("--size", default=32, show_default=True, type=click.Choice(["32", "64"]), help="Image side.")
@click.option("--seed", default=0, show_default=True, type=int)
def images_command(out_dir: str, per_class: int, size: str, seed: int) -> None:
    """Write a labelled ImageFolder of held-out zoo images (for ``check --data`` and ``purify --data``)."""
    from cbpt_guard_zoo.imagefolder import write_image_folder

    count = write_image_folder(out_dir, per_class=per_class, size=int(size), seed=seed)
    click.echo(f"wrote {count} images to {out_dir}")
