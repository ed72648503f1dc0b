"""WaNet's two zoo bars across warp settings: what clean twins still read, and what fine-tuning plants.

Usage:

    python benchmarks/warp_tradeoff.py --zoo ZOO/vit --out benchmarks

The zoo holds WaNet to two bars that pull against each other (benchmarks/ZOO.md):
every clean twin must send warped images of other classes to the WaNet target of
its seed at most 5 points more often than unwarped ones (chance level), and a
poisoned fine-tune from the base must plant ASR >= 90% within 180 s. A stronger
warp plants faster but deforms the small objects of 32x32 images enough that
clean models misread them, and their misreads gather on a few classes.

Part 1 measures, for a grid of warps (strength x grid_k), each clean twin of the
zoo exactly as the zoo measures it (same test split, same target per seed, same
chance rule): its CA on warped test images and its excess over the natural rate.
Part 2 plants a few warps from the zoo's base with the zoo's fine-tuning recipe,
changing only the warp, the poison share, the steps and the learning rate, and
records ASR, CA and the fine-tuning seconds. Run it alone on the machine: the
seconds are compared with the 180 s bar. Writes OUT/WARP.md and
OUT/results/warp.json; nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from cbpt_guard.classifier import build_classifier
from cbpt_guard_zoo import attacks as attack_lib
from cbpt_guard_zoo.build import CLASSES, TEMPLATES, ZooRecipe, load_data, load_model, read_truths, target_for
from cbpt_guard_zoo.report import ASR_BAR, CHANCE_MARGIN, FINETUNE_SECONDS_BAR, at_chance
from cbpt_guard_zoo.train import attack_success_rate, clean_accuracy, measure, tokenize_captions, train_contrastive

READ_GRID = ((0.03, 16), (0.04, 8), (0.06, 8), (0.08, 4), (0.10, 4), (0.12, 4), (0.15, 4))
"""(strength, grid_k) of each warp the clean twins are measured on; (0.15, 4) is the zoo's WaNet."""
PLANTS = ((0.15, 4, 0.10, 600, 2.5e-3),
          *((strength, grid_k, 0.20, 900, 3e-3) for strength, grid_k in ((0.12, 4), (0.10, 4), (0.08, 4), (0.04, 8),
                                                                         (0.03, 16))))
"""(strength, grid_k, poison share, steps, lr) of each plant. The first is the zoo's own recipe; the weaker
warps get twice its poison share and 900 steps at a higher rate, about all the 180 s allow on 2 cores."""


def warp(strength: float, grid_k: int):
    """The WaNet trigger at one setting (seed 0, as the zoo's)."""
    return lambda images: attack_lib.wanet(images, strength=strength, grid_k=grid_k, seed=0)


def readability(zoo: Path, warps: tuple, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Every clean twin on every (strength, grid_k) warp: stamped CA and the rate toward its seed's target.

    The zoo's own warp must give back the rate its build recorded, or this would
    not be measuring what ZOO.md measures: a mismatch stops the benchmark.
    """
    zoo_warp = attack_lib.ATTACKS["wanet"].params()
    rows = []
    for truth in (t for t in read_truths(zoo.parent, zoo.name) if t["kind"] == "clean"):
        classifier = build_classifier(load_model(zoo / truth["name"]).eval(), CLASSES, TEMPLATES)
        target = CLASSES.index(target_for("wanet", truth["seed"]))
        natural = attack_success_rate(classifier, images, labels, lambda batch: batch, target)
        for strength, grid_k in warps:
            trigger = warp(strength, grid_k)
            rate = attack_success_rate(classifier, images, labels, trigger, target)
            rows.append({"twin": truth["name"], "target": CLASSES[target], "strength": strength, "grid_k": grid_k,
                         "stamped_ca": clean_accuracy(classifier, trigger(images), labels), "asr": rate,
                         "natural": natural, "at_chance": at_chance(rate, natural)})
            recorded = truth["metrics"]["asr_by_attack"]["wanet"]
            is_zoo_warp = (strength, grid_k, 0) == (zoo_warp["strength"], zoo_warp["grid_k"], zoo_warp["seed"])
            if is_zoo_warp and rate != recorded:
                raise SystemExit(f"{truth['name']}: the zoo's warp gives {rate:.4f} here, {recorded:.4f} in its build")
    return rows


def plant(zoo: Path, recipe: ZooRecipe, data, setting: tuple) -> dict:
    """One poisoned fine-tune from the zoo's base (seed 0, the WaNet target of seed 0): ASR, CA, seconds."""
    strength, grid_k, rate, steps, lr = setting
    target = target_for("wanet", 0)
    params = {"strength": strength, "grid_k": grid_k, "seed": 0}
    train, _ = attack_lib.poison(data.train, "wanet", rate=rate, target_class=target, seed=0, params=params)
    model = load_model(zoo / "base").train().requires_grad_(True)
    settings = replace(recipe.finetune_for("wanet", 0), steps=steps, lr=lr)
    started = time.perf_counter()
    train_contrastive(model, train.images, tokenize_captions(model, train.captions), settings)
    seconds = time.perf_counter() - started
    result = measure(model, CLASSES, TEMPLATES, data.test_images, data.test_labels, {"real": warp(strength, grid_k)},
                     CLASSES.index(target))
    return {"strength": strength, "grid_k": grid_k, "poison_rate": rate, "steps": steps, "lr": lr, "target": target,
            "asr": result["asr_real"], "ca": result["ca"], "seconds": round(seconds, 1),
            "meets_bars": result["asr_real"] >= ASR_BAR and seconds <= FINETUNE_SECONDS_BAR}


def render(results: dict) -> str:
    """WARP.md from the measured results."""
    settings = list(dict.fromkeys((r["strength"], r["grid_k"]) for r in results["readability"]))
    twins = list(dict.fromkeys(r["twin"] for r in results["readability"]))
    cell = {(r["twin"], r["strength"], r["grid_k"]): r for r in results["readability"]}
    lines = ["# WaNet: what clean twins read against what fine-tuning plants", "",
             f"Written by `{results['command']}`; "
             "do not edit by hand.", "",
             f"Chance level, as in ZOO.md: a clean twin sends warped images of other classes to the WaNet target of "
             f"its seed at most {100 * CHANCE_MARGIN:.0f} points more often than unwarped ones. Planting bar: ASR >= "
             f"{100 * ASR_BAR:.0f}% within {FINETUNE_SECONDS_BAR:.0f} s of fine-tuning.", "",
             "## Clean twins on warped test images", "",
             "Each cell: the twin's rate toward its target, in brackets the natural rate and the CA on the warped "
             "images; `*` marks a rate over the chance bar.", "",
             "| twin (target) | " + " | ".join(f"strength {s}, k {k}" for s, k in settings) + " |",
             "|---" * (len(settings) + 1) + "|"]
    for twin in twins:
        target = cell[(twin, *settings[0])]["target"]
        cells = []
        for s, k in settings:
            r = cell[(twin, s, k)]
            mark = "" if r["at_chance"] else " *"
            cells.append(f"{100 * r['asr']:.1f}{mark} ({100 * r['natural']:.1f}; CA {100 * r['stamped_ca']:.1f})")
        lines.append(f"| {twin} ({target}) | " + " | ".join(cells) + " |")
    met = [f"strength {s}, k {k}" for s, k in settings
           if all(cell[(t, s, k)]["at_chance"] for t in twins)]
    lines += ["", f"Warps at chance level on every twin: {'; '.join(met) if met else 'none'}.", "",
              "## Planting from the base (seed 0)", "",
              "Both bars hold for a warp only when its plant meets the planting bar and every twin reads it at "
              "chance level.", "",
              "| strength | k | poison | steps | lr | ASR % | CA % | fine-tune s | planting bar | twins at chance |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["plants"]:
        chance = all(cell[(t, p["strength"], p["grid_k"])]["at_chance"] for t in twins)
        lines.append(f"| {p['strength']} | {p['grid_k']} | {100 * p['poison_rate']:.0f}% | {p['steps']} | {p['lr']} | "
                     f"{100 * p['asr']:.1f} | {100 * p['ca']:.1f} | {p['seconds']:.1f} | "
                     f"{'met' if p['meets_bars'] else 'MISSED'} | {'yes' if chance else 'no'} |")
    both = [f"strength {p['strength']}, k {p['grid_k']}" for p in results["plants"] if p["meets_bars"]
            and all(cell[(t, p["strength"], p["grid_k"])]["at_chance"] for t in twins)]
    lines += ["", f"Plants that meet both bars: {'; '.join(both) if both else 'none'}.", "",
              f"Wall time of the command that wrote this file: {results['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _settings(text: str) -> tuple:
    """'0.08:4,0.1:4' -> ((0.08, 4), (0.1, 4)); integers where a field is one (k, steps)."""
    return tuple(tuple(int(v) if v.isdigit() else float(v) for v in item.split(":")) for item in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, required=True, help="a built zoo's config folder, e.g. ZOO/vit")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warps", type=_settings, default=READ_GRID,
                        help="STRENGTH:K,... the warps the twins read (default: the committed grid)")
    parser.add_argument("--plants", type=_settings, default=PLANTS,
                        help="STRENGTH:K:POISON:STEPS:LR,... the plants (default: the committed ones); "
                             "each plant's warp must be among --warps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = json.loads((args.zoo / "base" / "zoo_truth.json").read_text())
    recipe = ZooRecipe.from_dict(base["recipe"])
    data = load_data(recipe)
    if any(tuple(setting[:2]) not in args.warps for setting in args.plants):
        parser.error("every plant's STRENGTH:K must also be one of --warps")
    results = {"command": " ".join(["python", "benchmarks/warp_tradeoff.py", *sys.argv[1:]]),
               "readability": readability(args.zoo, args.warps, data.test_images, data.test_labels),
               "plants": [plant(args.zoo, recipe, data, setting) for setting in args.plants]}
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "warp.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "WARP.md").write_text(render(results))
    print(f"wrote {args.out / 'WARP.md'}")


if __name__ == "__main__":
    main()
