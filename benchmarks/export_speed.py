"""Export speed benchmark: images per second through onnxruntime vs PyTorch eager on this CPU.

Usage:

    python benchmarks/export_speed.py --threads 2 --out benchmarks

Exports the classifier of ``examples/backdoored`` (fp32 and fp16) with
:func:`cbpt_guard.export.export_classifier`, then times the same probe images
through PyTorch eager (``torch.set_num_threads(T)``) and through onnxruntime's
CPU provider (``intra_op_num_threads = T``), batch by batch, the runtimes
taking turns pass by pass; it reports the best and the median pass. It writes OUT/EXPORT.md and
OUT/results/export.json; nothing in them is typed by hand. The figures are
from one run on a shared machine, so the load average before and after is
recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cbpt_guard.classifier import build_classifier
from cbpt_guard.export import export_classifier
from cbpt_guard.export.serve import OnnxClassifier
from cbpt_guard.intake import load_checkpoint
from cbpt_guard.probes import procedural_probes

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "backdoored"


def time_interleaved(runners: dict, images: dict, batch: int, passes: int) -> dict[str, list[float]]:
    """Seconds per full pass over the images for each runner, the runners taking turns pass by pass.

    Taking turns means a burst of load from another job on this shared machine
    hits every runtime alike. Pass 0 warms caches and allocators and is dropped.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(passes + 1):
        for name, run_batch in runners.items():
            pixels = images[name]
            started = time.perf_counter()
            for start in range(0, len(pixels), batch):
                run_batch(pixels[start : start + batch])
            if index:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def rate(seconds: list[float], count: int) -> dict:
    """Images per second at the best and the median pass."""
    return {"best_images_per_s": count / min(seconds), "median_images_per_s": count / statistics.median(seconds),
            "pass_seconds": [round(s, 4) for s in seconds]}


def run(threads: int, count: int, batch: int, passes: int) -> dict:
    """Export, then time PyTorch eager and onnxruntime (fp32, fp16) over the same images."""
    import onnxruntime

    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    loaded = load_checkpoint(MODEL)
    report = loaded.report
    classifier = build_classifier(loaded.model, report.classes, report.templates)
    provenance = {"source_checkpoint_sha256": report.checkpoint_sha256, "prompts_sha256": "hand-written"}
    images = procedural_probes(count, report.image_size[0], seed=0).images  # (N, 3, S, S)
    results: dict = {"exports": {}, "speed": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, fp16 in (("fp32", False), ("fp16", True)):
            started = time.perf_counter()
            result = export_classifier(classifier, Path(scratch) / f"{name}.onnx", classes=report.classes,
                                       provenance=provenance, fp16=fp16)
            results["exports"][name] = {
                "seconds_with_parity": round(time.perf_counter() - started, 2),
                "bytes": Path(result.path).stat().st_size, "sha256": result.sha256, "provider": result.provider,
                "max_abs_diff": result.max_abs_diff, "max_rel_diff": result.max_rel_diff,
                "top1_agreement": result.top1_agreement, "tolerance": result.tolerance}
        runners, inputs = {"pytorch eager fp32": classifier}, {"pytorch eager fp32": images}
        for name in ("fp32", "fp16"):
            served = OnnxClassifier(Path(scratch) / f"{name}.onnx", providers=["CPUExecutionProvider"],
                                    threads=threads)
            runners[f"onnxruntime {name}"], inputs[f"onnxruntime {name}"] = served.logits, images.numpy()
        with torch.inference_mode():
            seconds = time_interleaved(runners, inputs, batch, passes)
    results["speed"] = {name: rate(values, count) for name, values in seconds.items()}
    eager = results["speed"]["pytorch eager fp32"]
    for row in results["speed"].values():
        row["ratio_vs_eager_best"] = row["best_images_per_s"] / eager["best_images_per_s"]
        row["ratio_vs_eager_median"] = row["median_images_per_s"] / eager["median_images_per_s"]
    results["setup"] = {
        "model": "examples/backdoored", "architecture": report.architecture, "image_size": report.image_size[0],
        "images": count, "batch": batch, "passes": passes, "threads": threads,
        "torch_threads": torch.get_num_threads(), "onnxruntime_intra_op_threads": threads,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    return results


def render_markdown(results: dict, command: str) -> str:
    """EXPORT.md from the results alone."""
    setup = results["setup"]
    lines = ["# ONNX export: speed and parity", "", f"Written by `{command}`; do not edit by hand.", "",
             f"Model: `{setup['model']}` ({setup['architecture']}, {setup['image_size']}x{setup['image_size']}), "
             f"{setup['images']} procedural probe images in batches of {setup['batch']}, "
             f"{setup['passes']} timed passes per runtime after a warm-up pass, the runtimes taking turns pass by "
             f"pass. Threads: PyTorch "
             f"`set_num_threads({setup['torch_threads']})`, "
             f"onnxruntime `intra_op_num_threads={setup['onnxruntime_intra_op_threads']}`, CPU provider. "
             f"Machine: {setup['cpu_count']} CPUs ({setup['cpu']}), shared; load average "
             f"{setup['load_average_before'][0]} before, {setup['load_average_after'][0]} after. "
             f"torch {setup['torch']}, onnxruntime {setup['onnxruntime']}. One run. The ratio that counts is "
             f"best pass against best pass: on a shared machine a pass that overlaps another job measures the "
             f"neighbour. Medians are beside it, and the spread (slowest pass / fastest pass) shows how much "
             f"each runtime was disturbed; every pass is in results/export.json.", "",
             "| runtime | images/s (best) | ratio vs eager (best) | images/s (median) | ratio vs eager (median) "
             "| spread |", "|---|---|---|---|---|---|"]
    for name, row in results["speed"].items():
        spread = max(row["pass_seconds"]) / min(row["pass_seconds"])
        lines.append(f"| {name} | {row['best_images_per_s']:.0f} | {row['ratio_vs_eager_best']:.2f}x | "
                     f"{row['median_images_per_s']:.0f} | {row['ratio_vs_eager_median']:.2f}x | {spread:.1f}x |")
    lines += ["", "Exports (parity against PyTorch fp32 on 16 random + 32 probe images, checked in a separate "
              "onnxruntime process; seconds include the check):", "",
              "| precision | file | export + parity s | max abs diff | max rel diff | top-1 | tolerance |",
              "|---|---|---|---|---|---|---|"]
    for name, row in results["exports"].items():
        lines.append(f"| {name} | {row['bytes'] / 1e6:.2f} MB | {row['seconds_with_parity']} | "
                     f"{row['max_abs_diff']:.2e} | {row['max_rel_diff']:.2e} | {100 * row['top1_agreement']:.1f}% | "
                     f"{row['tolerance']:.2e} |")
    lines += ["", "fp16 is meant for GPUs: on the CPU provider onnxruntime inserts casts around the fp16 nodes "
              "that lack a CPU fp16 kernel, so its rate here says little about a GPU.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write both files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args(argv)
    results = run(args.threads, args.images, args.batch, args.passes)
    command = (f"python benchmarks/export_speed.py --threads {args.threads} --images {args.images} "
               f"--batch {args.batch} --passes {args.passes}")
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "export.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / "EXPORT.md").write_text(render_markdown(results, command))
    print(render_markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
