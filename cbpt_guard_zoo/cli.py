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


CONFIGS = ("vit", "resnet", "vit-tiny", "vit-b", "resnet-b", "vit-b-tiny")


@click.group("zoo")
def zoo_group() -> None:
    """Build the zoo of small, really trained and really backdoored open_clip models."""


def _resolve_configs(family_name: str | None, config: str | None) -> tuple[object, list[str]]:
    """The family and the configs a command works on: one config, or every planned config of a family."""
    from cbpt_guard.errors import UsageError
    from cbpt_guard_zoo.families import FAMILIES, family_of

    if config is not None:
        family = family_of(config)
        if family_name is not None and family.name != family_name:
            raise UsageError(f"config {config!r} belongs to family {family.name}, not {family_name}")
        return family, [config]
    family = FAMILIES[family_name or "a"]
    return family, list(family.plans)


@zoo_group.command("build")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Zoo directory.")
@click.option("--family", "family_name", type=click.Choice(["a", "b"]),
              help="Build every config of a family with its plan (a: vit; b: vit-b and resnet-b). "
                   "Default: the family of --config.")
@click.option("--config", type=click.Choice(CONFIGS), help="Build one config.  [default: vit, or the family's]")
@click.option("--attacks", help="Comma-separated attack names, or 'all'.  [default: all, or the family's plan]")
@click.option("--seeds", type=click.IntRange(0, 50),
              help="Backdoored seeds per attack.  [default: 3, or the family's plan]")
@click.option("--clean", type=click.IntRange(0, 50), help="Clean twins.  [default: 6, or the family's plan]")
@click.option("--base-steps", type=click.IntRange(1), help="Override the base's training steps.")
@click.option("--finetune-steps", type=click.IntRange(1), help="Override each variant's fine-tuning steps.")
@click.option("--report-dir", type=click.Path(file_okay=False),
              help="Write ZOO.md and results/zoo.json here (e.g. benchmarks); ZOO-B.md and results/zoo-b.json "
                   "for family B.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="torch CPU threads.")
def build_command(out_dir: str, family_name: str | None, config: str | None, attacks: str | None, seeds: int | None,
                  clean: int | None, base_steps: int | None, finetune_steps: int | None, report_dir: str | None,
                  threads: int) -> None:
    """Build (or resume) a zoo under OUT; models already built are skipped."""
    from dataclasses import replace
    from pathlib import Path

    import torch

    from cbpt_guard.errors import UsageError
    from cbpt_guard_zoo import attacks as attack_lib
    from cbpt_guard_zoo.build import build_zoo, default_recipe
    from cbpt_guard_zoo.families import FAMILY_A, Plan

    torch.set_num_threads(threads)
    family, configs = _resolve_configs(family_name, config)
    started = time.perf_counter()
    for name in configs:
        plan = family.plans.get(name, Plan(None, 3, 6))
        chosen = attacks or (",".join(plan.attacks) if plan.attacks else ALL)
        names = sorted(attack_lib.ATTACKS) if chosen == ALL else [a.strip() for a in chosen.split(",") if a.strip()]
        unknown = [a for a in names if a not in attack_lib.ATTACKS]
        if unknown:
            raise UsageError(f"unknown attack(s) {unknown}; known: {', '.join(sorted(attack_lib.ATTACKS))}")
        recipe = default_recipe(name)
        if base_steps:
            recipe = replace(recipe, base=replace(recipe.base, steps=base_steps))
        if finetune_steps:
            recipe = replace(recipe, finetune=replace(recipe.finetune, steps=finetune_steps))
        count = plan.seeds if seeds is None else seeds
        twins = plan.clean if clean is None else clean
        truths = build_zoo(Path(out_dir), recipe, names, count, twins, progress=progress_printer())
        if report_dir and family is FAMILY_A:
            _write_family_a(Path(report_dir), truths, name, round(time.perf_counter() - started, 1),
                            f"cbpt-guard zoo build --out {out_dir} --config {name} --attacks {chosen} "
                            f"--seeds {count} --clean {twins} --report-dir {report_dir}"
                            + (f" --base-steps {base_steps}" if base_steps else "")
                            + (f" --finetune-steps {finetune_steps}" if finetune_steps else ""))
    if report_dir and family is not FAMILY_A:
        command = " ".join(["cbpt-guard zoo build", f"--out {out_dir}", f"--family {family.name}"]
                           + [f"--{option.replace('_', '-')} {value}" for option, value in
                              (("config", config), ("attacks", attacks), ("seeds", seeds), ("clean", clean),
                               ("base_steps", base_steps), ("finetune_steps", finetune_steps))
                              if value is not None]
                           + [f"--report-dir {report_dir}", f"--threads {threads}"])
        _write_family(Path(out_dir), Path(report_dir), family, round(time.perf_counter() - started, 1), command)


def _write_family_a(report_dir, truths: list[dict], config: str, seconds: float | None, command: str) -> None:
    """ZOO.md (or ZOO-<config>.md) and its results json, for one family-A config."""
    from cbpt_guard_zoo.build import CLASSES
    from cbpt_guard_zoo.report import summarise, write_reports

    summary = summarise(truths, len(CLASSES), seconds)
    json_path, markdown_path = report_paths(report_dir, config)
    write_reports(summary, json_path, markdown_path, command)
    click.echo(f"wrote {markdown_path} and {json_path}")


def _write_family(out, report_dir, family, seconds: float | None, command: str) -> None:
    """ZOO-<FAMILY>.md and results/zoo-<family>.json: every built config of the family under ``out``."""
    from cbpt_guard_zoo.build import read_truths
    from cbpt_guard_zoo.report import write_family_reports

    truths = {config: read_truths(out, config) for config in family.configs}
    json_path = report_dir / "results" / f"zoo-{family.name}.json"
    markdown_path = report_dir / f"ZOO-{family.name.upper()}.md"
    write_family_reports(family, {c: t for c, t in truths.items() if t}, seconds, json_path, markdown_path, command)
    click.echo(f"wrote {markdown_path} and {json_path}")


@zoo_group.command("measure")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, exists=True), help="Zoo directory.")
@click.option("--family", "family_name", type=click.Choice(["a", "b"]),
              help="Measure every built config of a family.  Default: the family of --config.")
@click.option("--config", type=click.Choice(CONFIGS), help="Measure one config.  [default: vit, or the family's]")
@click.option("--report-dir", type=click.Path(file_okay=False), help="Rewrite ZOO.md and results/zoo.json here.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="torch CPU threads.")
def measure_command(out_dir: str, family_name: str | None, config: str | None, report_dir: str | None,
                    threads: int) -> None:
    """Measure every built model of a zoo again from its saved weights (no training)."""
    from pathlib import Path

    import torch

    from cbpt_guard_zoo.build import ZooRecipe, read_truths, remeasure
    from cbpt_guard_zoo.families import FAMILY_A

    torch.set_num_threads(threads)
    family, configs = _resolve_configs(family_name, config)
    if family is not FAMILY_A and config is None:
        configs = [c for c in family.configs if read_truths(Path(out_dir), c)]
    for name in configs:
        truths = read_truths(Path(out_dir), name)
        if not truths:
            from cbpt_guard.errors import NothingScannableError

            raise NothingScannableError(f"{out_dir}/{name}: no built models to measure")
        recipe = ZooRecipe.from_dict(truths[0]["recipe"])
        truths = remeasure(Path(out_dir), recipe, progress=progress_printer())
        if report_dir and family is FAMILY_A:
            _write_family_a(Path(report_dir), truths, name, None,
                            f"cbpt-guard zoo measure --out {out_dir} --config {name} --report-dir {report_dir}")
    if report_dir and family is not FAMILY_A:
        command = (f"cbpt-guard zoo measure --out {out_dir} --family {family.name}"
                   + (f" --config {config}" if config else "") + f" --report-dir {report_dir}")
        _write_family(Path(out_dir), Path(report_dir), family, None, command)


def report_paths(report_dir, config: str):
    """(results json, markdown) for a config: ZOO.md for the main ViT zoo, ZOO-<config>.md otherwise."""
    suffix = "" if config == "vit" else f"-{config}"
    return report_dir / "results" / f"zoo{suffix}.json", report_dir / f"ZOO{suffix}.md"


@zoo_group.command("images")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="ImageFolder to create.")
@click.option("--per-class", default=40, show_default=True, type=click.IntRange(1, 54), help="Images per class.")
@click.option("--family", "family_name", default="a", show_default=True, type=click.Choice(["a", "b"]),
              help="Whose classes and images.")
@click.option("--size", type=click.Choice(["32", "64"]), help="Image side.  [default: the family's: 32 or 64]")
@click.option("--seed", default=0, show_default=True, type=int)
def images_command(out_dir: str, per_class: int, family_name: str, size: str | None, seed: int) -> None:
    """Write a labelled ImageFolder of held-out zoo images (for ``check --data`` and ``purify --data``)."""
    from cbpt_guard_zoo.families import FAMILIES
    from cbpt_guard_zoo.imagefolder import write_image_folder

    family = FAMILIES[family_name]
    count = write_image_folder(out_dir, per_class=per_class, size=int(size or family.image_size), seed=seed,
                               family=family.name)
    click.echo(f"wrote {count} images to {out_dir}")
