"""Detection benchmark: cbpt-guard's detector and a DECREE-style baseline on every zoo model.

Usage (after `cbpt-guard zoo build --out ZOO ...`):

    python benchmarks/detection.py --zoo ZOO/vit --out benchmarks \
        [--write-calibration cbpt_guard/detect/calibrations/default.json]

For every model and probe tier it gathers the detector's evidence (default
budget, seed 0) and runs the baseline on the same probes, caching each result
in OUT/results/detection_raw.json so an interrupted run resumes. Scores are
then calibrated on the clean twins; each clean twin is scored with a
calibration fitted on the *other* clean twins (leave-one-out), so its false
positive is measured on a model the calibration never saw. It writes
OUT/DETECTION.md and OUT/results/detection.json; nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # evidence_cache.py and decree_baseline.py beside this file

from decree_baseline import DECREE_PL1_RULE, decree  # noqa: E402
from evidence_cache import BASELINE_SOURCES, DETECTOR_SOURCES, cached_evidence, source_digest, weights_digest  # noqa: E402

from cbpt_guard.classifier import build_classifier  # noqa: E402
from cbpt_guard.detect import calibration as calib  # noqa: E402
from cbpt_guard.detect.budget import scoring_settings  # noqa: E402
from cbpt_guard.detect.run import DetectBudget, gather_evidence  # noqa: E402
from cbpt_guard.intake import load_checkpoint  # noqa: E402
from cbpt_guard.intake.architecture import build_model  # noqa: E402
from cbpt_guard.probes import ProbeSet, procedural_probes  # noqa: E402
from cbpt_guard_zoo import data as data_lib  # noqa: E402
from cbpt_guard_zoo.build import TRUTH_NAME  # noqa: E402

TIERS = ("zero-data", "unlabelled")


def auroc(positives: list[float], negatives: list[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def unlabelled_probes(count: int) -> ProbeSet:
    """The unlabelled tier: images of the deployment's domain without labels (the zoo's few-shot split)."""
    shapes = data_lib.make_split("fewshot", 12 * 8, 32, 0).images
    digits = data_lib.make_digits(32, 0, "fewshot").images
    pool = torch.cat([shapes, digits])
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:count]
    return ProbeSet(pool[order], "unlabelled", source="zoo few-shot split, labels dropped")


def detector_run(directory: Path, tier: str, budget: DetectBudget, evidence_cache: Path) -> dict:
    """The detector's evidence features, targets and seconds on one model under one tier.

    The zero-data tier's detection run (default budget, seed 0) is the one
    benchmarks/purification.py trains against, kept in ``evidence_cache``.
    """
    if tier == "zero-data" and budget == DetectBudget():
        summary = cached_evidence(directory, evidence_cache)
        return {"features": summary["features"], "targets": summary["targets"], "seconds": summary["seconds"]}
    loaded = load_checkpoint(directory)
    started = time.perf_counter()
    evidence = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates,
                               probes=tier_probes(tier, budget), budget=budget, seed=0)
    return {"features": evidence.features, "targets": evidence.targets,
            "seconds": round(time.perf_counter() - started, 2)}


def baseline_run(directory: Path, tier: str, budget: DetectBudget) -> dict:
    """The DECREE-style baseline's PL1, call and seconds on the same model and probes."""
    loaded = load_checkpoint(directory)
    classifier = build_classifier(loaded.model, loaded.report.classes, loaded.report.templates)
    pixels = (tier_probes(tier, budget) or procedural_probes(budget.probes, classifier.image_size, 0)).images
    started = time.perf_counter()
    baseline = decree(classifier, pixels[: budget.probes], steps=budget.inversion.steps, seed=0)
    return {"pl1": baseline.pl1, "collapsed": baseline.collapsed, "trojaned": baseline.trojaned,
            "seconds": round(time.perf_counter() - started, 2)}


def tier_probes(tier: str, budget: DetectBudget) -> ProbeSet | None:
    """The probes of a tier; None for zero-data (the detector makes its own procedural probes)."""
    return unlabelled_probes(budget.probes) if tier == "unlabelled" else None


def score_tier(raw: dict, truths: dict) -> dict:
    """Calibrate, score and summarise one tier's raw results."""
    clean = [n for n, t in truths.items() if t["kind"] == "clean"]
    def fit(names: list[str]) -> calib.Calibration:
        return calib.fit({n: raw[n]["features"] for n in names},
                         reference_targets={n: raw[n]["targets"] for n in names})

    everyone = fit(clean)
    rows = []
    for name, truth in sorted(truths.items()):
        reference = everyone if name not in clean else fit([n for n in clean if n != name])
        value, zs = calib.score(raw[name]["features"], reference, raw[name]["targets"])
        undiscounted = calib.score(raw[name]["features"], reference)[0]  # the same, without the attractor discount
        suspected = calib.suspected_target(zs, raw[name]["targets"], reference)
        signal = next(k for k in sorted(zs, key=lambda k: -zs[k]) if raw[name]["targets"].get(k) == suspected)
        rows.append({"name": name, "kind": truth["kind"], "attack": truth["attack"], "target": truth["target"],
                     "score": value, "score_undiscounted": undiscounted, "flagged": value >= reference.threshold,
                     "suspected": suspected,
                     "signal": signal, "seconds": raw[name]["seconds"], "decree_pl1": raw[name]["baseline"]["pl1"],
                     "decree_flagged": raw[name]["baseline"]["trojaned"]})
    clean_rows = [r for r in rows if r["kind"] == "clean"]
    attacks = sorted({r["attack"] for r in rows if r["kind"] == "backdoored"})
    per_attack = {}
    for attack in attacks + ["overall"]:
        bad = [r for r in rows if r["kind"] == "backdoored" and (attack == "overall" or r["attack"] == attack)]
        detected = [r for r in bad if r["flagged"]]
        per_attack[attack] = {
            "models": len(bad),
            "auroc": auroc([r["score"] for r in bad], [r["score"] for r in clean_rows]),
            "auroc_undiscounted": auroc([r["score_undiscounted"] for r in bad],
                                        [r["score_undiscounted"] for r in clean_rows]),
            "tpr": len(detected) / len(bad) if bad else None,
            "target_accuracy": (sum(r["suspected"] == r["target"] for r in detected) / len(detected)
                                if detected else None),
            "decree_auroc": auroc([-r["decree_pl1"] for r in bad], [-r["decree_pl1"] for r in clean_rows]),
            "decree_tpr": sum(r["decree_flagged"] for r in bad) / len(bad) if bad else None,
        }
    return {"threshold": everyone.threshold, "attractor_margin": everyone.attractor_margin, "calibration": everyone,
            "rows": rows, "per_attack": per_attack,
            "fpr": sum(r["flagged"] for r in clean_rows) / len(clean_rows) if clean_rows else None,
            "decree_fpr": sum(r["decree_flagged"] for r in clean_rows) / len(clean_rows) if clean_rows else None}


def zoo_domain(model_dir: Path):
    """The model family of the zoo's clean twins (they share config and class list): the calibration's domain."""
    from cbpt_guard.detect.domain import domain_of_loaded
    from cbpt_guard.intake import load_checkpoint

    return domain_of_loaded(load_checkpoint(model_dir))


def scaling(zoo: Path, budget: DetectBudget) -> list[dict]:
    """Seconds of one detection run as the class count and the image size grow."""
    loaded = load_checkpoint(next(p for p in sorted(zoo.iterdir()) if (p / TRUTH_NAME).is_file()))
    report, rows = loaded.report, []
    for count in (5, 11, len(report.classes)):
        started = time.perf_counter()
        gather_evidence(loaded.model, report.classes[:count], report.templates, budget=budget, seed=0)
        rows.append({"image_size": report.image_size[0], "classes": count,
                     "seconds": round(time.perf_counter() - started, 2)})
    config = json.loads((zoo / "base" / "open_clip_config.json").read_text())["model_cfg"]
    config["vision_cfg"]["image_size"] = 64  # same tower at 64x64: timing only, weights untrained
    model = build_model(config, {})
    started = time.perf_counter()
    gather_evidence(model, report.classes, report.templates, budget=budget, seed=0)
    rows.append({"image_size": 64, "classes": len(report.classes), "seconds": round(time.perf_counter() - started, 2)})
    return rows


def render(results: dict, command: str) -> str:
    """DETECTION.md from the results alone."""
    fmt = lambda v, pct=False: "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")  # noqa: E731
    lines = ["# Detection benchmark", "", f"Written by `{command}`; do not edit by hand.", "",
             f"Zoo: `{results['zoo']}`. Budget: {json.dumps(results['budget'])}.", ""]
    for tier, tier_result in results["tiers"].items():
        lines += [f"## {tier} tier", "",
                  f"Shipped threshold {tier_result['threshold']:.4f}; false positives on clean twins "
                  f"(leave-one-out calibration): {fmt(tier_result['fpr'], True)}; DECREE (PL1 < {DECREE_PL1_RULE}) "
                  f"false positives: {fmt(tier_result['decree_fpr'], True)}. Evidence toward a class the clean "
                  f"references' same family also landed on is lowered by {tier_result['attractor_margin']:.1f} z "
                  "(calibration.py's attractor discount); the AUROC without it stands beside.", "",
                  "| attack | models | AUROC | AUROC, no attractor discount | TPR | target correct | DECREE AUROC "
                  "| DECREE TPR |",
                  "|---|---|---|---|---|---|---|---|"]
        for attack, row in tier_result["per_attack"].items():
            lines.append(f"| {attack} | {row['models']} | {fmt(row['auroc'])} | {fmt(row['auroc_undiscounted'])} | "
                         f"{fmt(row['tpr'], True)} | "
                         f"{fmt(row['target_accuracy'], True)} | {fmt(row['decree_auroc'])} | "
                         f"{fmt(row['decree_tpr'], True)} |")
        lines += ["", "| model | kind | attack | target | score | flagged | suspected (signal) | s | DECREE PL1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in tier_result["rows"]:
            lines.append(f"| {row['name']} | {row['kind']} | {row['attack'] or '-'} | {row['target'] or '-'} | "
                         f"{row['score']:.3f} | {'yes' if row['flagged'] else 'no'} | {row['suspected']} "
                         f"({row['signal']}) | {row['seconds']:.1f} | {row['decree_pl1']:.4f} |")
        lines.append("")
    lines += ["## Cost", "", f"Mean {results['seconds_mean']:.1f} s and max {results['seconds_max']:.1f} s per model "
              "(zero-data tier, this machine's CPU).", "", "| image size | classes | seconds |", "|---|---|---|"]
    lines += [f"| {r['image_size']} | {r['classes']} | {r['seconds']:.1f} |" for r in results["scaling"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", required=True, type=Path, help="a config folder of a built zoo, e.g. zoo/vit")
    parser.add_argument("--out", default=Path("benchmarks"), type=Path)
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--threads", default=2, type=int)
    parser.add_argument("--write-calibration", type=Path, help="also write the zero-data calibration here")
    parser.add_argument("--evidence-cache", default=Path("/work/cache/purify"), type=Path,
                        help="where the zero-data detection runs are kept (shared with purification.py's --cache)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = DetectBudget()
    truths = {p.parent.name: json.loads(p.read_text()) for p in sorted(args.zoo.glob(f"*/{TRUTH_NAME}"))}
    truths = {n: t for n, t in truths.items() if t["kind"] != "base"}
    cache_path = args.out / "results" / "detection_raw.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    # Each part of an entry is stamped with what decides it and run again when that changed: the model's
    # weights, and the source of the detector or of the baseline (and the zoo data the unlabelled tier reads).
    detector = source_digest(*DETECTOR_SOURCES, "cbpt_guard_zoo/data.py")
    decree_source = source_digest(*BASELINE_SOURCES, "cbpt_guard_zoo/data.py")
    for tier in args.tiers.split(","):
        for name in truths:
            key, weights = f"{tier}/{name}", weights_digest(args.zoo / name)
            entry = dict(cache.get(key, {}))  # a copy: compared with the cached entry below
            if entry.get("weights_sha256") != weights:
                entry = {"weights_sha256": weights}
            if entry.get("detector_sha256") != detector:
                entry |= (detector_run(args.zoo / name, tier, budget, args.evidence_cache)
                          | {"detector_sha256": detector})
            if entry.get("baseline", {}).get("source_sha256") != decree_source:
                entry["baseline"] = baseline_run(args.zoo / name, tier, budget) | {"source_sha256": decree_source}
            if entry != cache.get(key):
                cache[key] = entry
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
                print(f"{key}: {entry['seconds']} s", file=sys.stderr, flush=True)
    tiers = {tier: score_tier({n: cache[f"{tier}/{n}"] for n in truths}, truths) for tier in args.tiers.split(",")}
    if args.write_calibration and "zero-data" in tiers:  # valid only at the budget the references ran at
        clean = sorted(n for n, t in truths.items() if t["kind"] == "clean")
        fitted = dataclasses.replace(tiers["zero-data"]["calibration"], budget=scoring_settings(budget),
                                     domain=zoo_domain(args.zoo / clean[0]),
                                     reference_sha256={n: cache[f"zero-data/{n}"]["weights_sha256"] for n in clean})
        args.write_calibration.write_text(fitted.to_json())
    seconds = [cache[f"zero-data/{n}"]["seconds"] for n in truths if f"zero-data/{n}" in cache]
    results = {"zoo": str(args.zoo), "budget": {"families": list(budget.families), "probes": budget.probes,
                                                  "steps": budget.inversion.steps,
                                                  "anomaly_steps": budget.anomaly_steps,
                                                  "targeted_classes": budget.targeted_classes},
               "tiers": {t: {k: v for k, v in r.items() if k != "calibration"} for t, r in tiers.items()},
               "seconds_mean": statistics.fmean(seconds), "seconds_max": max(seconds),
               "scaling": scaling(args.zoo, budget)}
    command = "python benchmarks/detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results" / "detection.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / "DETECTION.md").write_text(render(results, command))
    print(f"wrote {args.out}/DETECTION.md and {args.out}/results/detection.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
