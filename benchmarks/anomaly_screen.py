"""The per-class anomaly's screen: does it keep the classes an exhaustive search ranks cheapest, and what does it cost?

Two measurements, written to benchmarks/SCREEN.md and benchmarks/results/screen.json:

1. **Recall** on real models (the examples, and every model of a zoo folder
   given with --zoo that has its weights): the anomaly search over every class
   (the detection default up to 32 classes) against the screened search at
   smaller class budgets (``max_classes`` below the class count, so the screen
   runs). Per model and budget: whether the real target (a backdoored model's
   zoo_truth.json) was searched, and whether the targeted stage's candidates
   (the ranking's first ``targeted_classes``, cbpt_guard/detect/run.py) still
   hold the exhaustive search's candidates and the target.
2. **Cost** on an open_clip ViT-B-32 with random weights at 224 px and random
   unit class embeddings, at 100 and 1,000 classes, under a tiny budget (steps
   and probes below), each run in its own process so that its peak resident
   memory is its own. Random weights say nothing about efficacy, only cost.

Usage: python benchmarks/anomaly_screen.py [--zoo /work/zoo/vit] [--skip-cost] [--cost-classes 100,1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (8, 12, 16)
"""Class budgets below the examples' 22 classes, so that the screen runs."""
TARGETED = 4
"""The detection default of targeted classes: the ranking's first this many are the targeted stage's candidates."""
COST_PROBES, COST_STEPS = 2, 1


def _models(zoo: Path | None) -> list[Path]:
    found = [ROOT / "examples" / "backdoored", ROOT / "examples" / "clean"]
    if zoo is not None and zoo.is_dir():
        found += sorted(p for p in zoo.iterdir() if (p / "open_clip_model.safetensors").is_file()
                        and (p / "zoo_truth.json").is_file() and p.name != "base")
    return found


def recall(model_dir: Path) -> dict:
    """Exhaustive and screened anomaly searches of one model, as detection runs them (seed 0, 12 probes, 30 steps)."""
    import torch

    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.detect.anomaly import class_anomaly
    from cbpt_guard.detect.budget import DetectBudget
    from cbpt_guard.intake import load_checkpoint
    from cbpt_guard.probes import procedural_probes

    torch.set_num_threads(1)
    budget = DetectBudget()
    loaded = load_checkpoint(model_dir)
    classes = loaded.report.classes
    classifier = build_classifier(loaded.model, classes, loaded.report.templates)
    probes = procedural_probes(budget.probes, classifier.image_size, 0).images[: budget.anomaly_probes]
    truth = json.loads((model_dir / "zoo_truth.json").read_text())
    target = truth.get("target") if truth.get("kind") == "backdoored" else None
    started = time.perf_counter()
    full = class_anomaly(classifier, probes, steps=budget.anomaly_steps, seed=0)
    row = {"model": str(model_dir.relative_to(ROOT)) if model_dir.is_relative_to(ROOT) else str(model_dir),
           "classes": len(classes), "target": target, "exhaustive": _summary(full, classes, target),
           "exhaustive_seconds": round(time.perf_counter() - started, 1), "screened": {}}
    candidates = set(full.ranking[:TARGETED])
    for k in BUDGETS:
        started = time.perf_counter()
        found = class_anomaly(classifier, probes, steps=budget.anomaly_steps, seed=0, max_classes=k)
        summary = _summary(found, classes, target)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["exhaustive_candidates_searched"] = len(candidates & set(found.searched))
        summary["exhaustive_candidates_kept"] = len(candidates & set(found.ranking[:TARGETED]))
        row["screened"][str(k)] = summary
    return row


def _summary(found, classes: tuple[str, ...], target: str | None) -> dict:
    index = classes.index(target) if target in classes else None
    return {"suspect": classes[found.suspect_index], "anomaly_index": round(found.anomaly_index, 3),
            "searched": len(found.searched), "candidates": [classes[c] for c in found.ranking[:TARGETED]],
            "target_searched": None if index is None else index in found.searched,
            "target_rank": None if index is None else found.ranking.index(index) + 1}


def cost(classes: int) -> dict:
    """Seconds and peak RSS of the anomaly stage alone on a random-weight ViT-B-32 (run in a child process)."""
    command = [sys.executable, __file__, "--cost-child", str(classes)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cost_child(classes: int) -> None:
    import open_clip
    import torch

    from cbpt_guard.classifier import ZeroShotClassifier
    from cbpt_guard.detect.anomaly import class_anomaly
    from cbpt_guard.detect.budget import DetectBudget
    from cbpt_guard.probes import procedural_probes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    text = torch.nn.functional.normalize(torch.randn(classes, model.text_projection.shape[1]), dim=-1)
    classifier = ZeroShotClassifier(model, text)
    probes = procedural_probes(COST_PROBES, classifier.image_size, 0).images
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    found = class_anomaly(classifier, probes, steps=COST_STEPS, seed=0, max_classes=DetectBudget().anomaly_classes)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"classes": classes, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024),
                      "rss_before_mib": round(before / 1024), "searched": len(found.searched),
                      "screened": found.screen is not None}))


def _markdown(rows: list[dict], costs: list[dict]) -> str:
    from cbpt_guard.detect.budget import DetectBudget

    lines = ["# The per-class anomaly's screen", "",
             "Written by `python benchmarks/anomaly_screen.py`; numbers in benchmarks/results/screen.json. "
             "Up to `detection.budget.anomaly_classes` classes (default "
             f"{DetectBudget().anomaly_classes}) every class is searched, exactly as before; above it a screen "
             "(one patch per group of classes) picks the suspects, and a random reference of as many classes gives "
             "the index its median and spread (cbpt_guard/detect/anomaly.py).", "",
             "## Recall: the screen forced on real models", "",
             f"Detection's anomaly settings (12 probes, 30 steps, seed 0); the budgets are below the class count so "
             f"the screen runs. *Candidates* are the ranking's first {TARGETED}, which the targeted stage inverts "
             "toward. Target rank is its place in the ranking (searched classes by cost, then the rest by screen "
             "cost).", "",
             "| model | budget | searched | suspect | index | target searched | target rank | "
             f"exhaustive's {TARGETED} candidates searched / kept | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        full = row["exhaustive"]
        lines.append(f"| {row['model']} | all {row['classes']} | {full['searched']} | {full['suspect']} | "
                     f"{full['anomaly_index']:.2f} | {_yes(full['target_searched'])} | {full['target_rank'] or '-'} |"
                     f" {TARGETED} / {TARGETED} | {row['exhaustive_seconds']} |")
        for k, found in row["screened"].items():
            lines.append(f"| | {k} | {found['searched']} | {found['suspect']} | {found['anomaly_index']:.2f} | "
                         f"{_yes(found['target_searched'])} | {found['target_rank'] or '-'} | "
                         f"{found['exhaustive_candidates_searched']} / {found['exhaustive_candidates_kept']} | "
                         f"{found['seconds']} |")
    screened = [found for row in rows for found in row["screened"].values()]
    with_target = [found for found in screened if found["target_searched"] is not None]
    if screened:
        kept = sum(found["exhaustive_candidates_kept"] for found in screened) / len(screened)
        lines += ["", f"Over {len(screened)} screened runs on {len(rows)} models: the exhaustive search's "
                  f"{TARGETED} targeted candidates kept among the screened run's {TARGETED}: {kept:.1f} on average; "
                  f"the real target searched in {sum(bool(f['target_searched']) for f in with_target)} of "
                  f"{len(with_target)} runs on backdoored models (the exhaustive search ranks it "
                  f"{', '.join(str(r['exhaustive']['target_rank']) for r in rows if r['target'])} there)."]
    if costs:
        lines += ["", "## Cost: random-weight ViT-B-32 at 224 px", "",
                  f"The anomaly stage alone, {COST_PROBES} probes, {COST_STEPS} step, default class budget, one "
                  "thread of this CPU, each run in its own process (peak RSS includes the model). Random weights "
                  "measure cost, not efficacy.", "",
                  "| classes | searched | screened | seconds | peak RSS (MiB) |", "|---|---|---|---|---|"]
        for entry in costs:
            lines.append(f"| {entry['classes']} | {entry['searched']} | {_yes(entry['screened'])} | "
                         f"{entry['seconds']} | {entry['peak_rss_mib']} |")
        by = {entry["classes"]: entry["seconds"] for entry in costs}
        if 100 in by and 1000 in by:
            lines += ["", f"1,000 classes cost {by[1000] / by[100]:.2f}x what 100 cost (goal: at most 3x)."]
    lines += ["", f"Machine: {platform.machine()}, Python {platform.python_version()}.", ""]
    return "\n".join(lines)


def _yes(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def main() -> None:
    """Run the measurements and write SCREEN.md and results/screen.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--cost-classes", default="100,1000")
    parser.add_argument("--cost-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    if args.cost_child is not None:
        _cost_child(args.cost_child)
        return
    results_file = args.out / "results" / "screen.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else {}
    rows = previous.get("recall", []) if args.skip_recall else [recall(m) for m in _models(args.zoo)]
    costs = previous.get("cost", []) if args.skip_cost else [cost(int(c)) for c in args.cost_classes.split(",")]
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({"recall": rows, "cost": costs}, indent=2) + "\n")
    (args.out / "SCREEN.md").write_text(_markdown(rows, costs))


if __name__ == "__main__":
    main()
