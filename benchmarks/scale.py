"""Cost at real size: open_clip CLIPs of 88M to 430M parameters at 224 px, with 10 to 1,000 classes.

Usage:

    python benchmarks/scale.py                         # the full run (about 30 minutes on 2 idle cores)
    python benchmarks/scale.py --archs ViT-B-32 --classes 10,100 --no-checks   # a quick look
    python benchmarks/scale.py --gpu-check             # what benchmarks/gpu_check.sh runs on a CUDA machine

What it does, writing ``benchmarks/results/scale.json`` and ``benchmarks/SCALE.md``
(nothing in them is typed by hand):

1. Makes each model itself: ``open_clip.create_model(ARCH)`` with random weights
   (seeded), saved as an open_clip directory (config + safetensors), and class
   lists of 10, 100 and 1,000 made-up names. Random weights are fine for cost,
   not for efficacy: no detection or purification *result* here means anything.
2. Per architecture and class count, in a child process of its own, times each
   stage under a short budget and reads its peak memory (the process's peak
   resident set, reset before each stage through ``/proc/self/clear_refs``):
   intake against the plain baseline (``safetensors.torch.load_file`` plus
   ``open_clip.create_model`` of the same file, timed in the same process), the
   class embeddings, each inversion family per step, the per-class anomaly
   search (through ``gather_evidence``, so whatever screening the detector does
   is what is timed), one targeted inversion per step, CBPT per step, and the
   ONNX export with its parity check. The default budget's cost is extrapolated
   linearly from these (steps, batch, probes and candidate classes scale it;
   each row says how).
3. Runs the full ``cbpt-guard check`` (zero-data) on ViT-B-32 with 10, 100 and
   1,000 classes under ``policies/cpu-large-models.yaml`` as a child process,
   recording its exit code, its Verdict's decision and stage timings, and its
   peak memory (``wait4``'s ``ru_maxrss``, and a poll of its resident set that
   stops it at ``--memory-cap-gb``).

The check rows run beside the stage workers (``--lanes`` of them at once). A child
that runs out of time or memory, or fails, is recorded as such with the reason;
a stage that was not run says why. Every bound is a flag, so a run's
cost is bounded: ``--archs``, ``--classes``, ``--check-classes``, ``--steps``,
``--batch``, ``--worker-timeout``, ``--check-timeout``, ``--cbpt-max-classes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
REPORT = REPO / "benchmarks" / "SCALE.md"
GPU_RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"
CPU_POLICY = REPO / "policies" / "cpu-large-models.yaml"
ARCHS = ("ViT-B-32", "ViT-B-16", "RN50", "ViT-L-14")
CLASS_COUNTS = (10, 100, 1000)
TEMPLATES = ("a photo of a {}.",)
DEFAULT_STEPS = 300  # the policy schema's detection.budget.steps
DEFAULT_BATCH = 32
DEFAULT_TARGETED = 4
DEFAULT_ANOMALY_STEPS = 30
DEFAULT_ANOMALY_PROBES = 12
DEFAULT_CBPT_STEPS = 100
GB = 1024 ** 3


# --- models --------------------------------------------------------------------------------------------------------


def class_names(count: int) -> list[str]:
    """``count`` distinct made-up class names (the text tower's cost depends on their token count, kept alike)."""
    colours = ("red", "green", "blue", "grey", "brown", "white", "black", "orange", "purple", "yellow")
    things = ("car", "bird", "chair", "boat", "lamp", "dog", "tree", "cup", "shoe", "kite")
    return [f"{colours[i % 10]} {things[(i // 10) % 10]} {i // 100}" for i in range(count)]


def make_model(arch: str, work: Path) -> Path:
    """An open_clip directory of ``arch`` with seeded random weights (safetensors), made once per work folder."""
    directory = work / "models" / arch
    if (directory / "open_clip_model.safetensors").exists():
        return directory
    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_for_hf

    class _NoTokenizerFiles:
        def save_pretrained(self, dest) -> None:
            """The built-in CLIP tokenizer has no files to save."""

    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    directory.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, _NoTokenizerFiles(), open_clip.get_model_config(arch), str(directory), safe_serialization=True)
    return directory


def classes_file(count: int, work: Path) -> Path:
    """A class-names file of ``count`` names, one a line."""
    path = work / f"classes-{count}.txt"
    path.write_text("\n".join(class_names(count)) + "\n")
    return path


# --- memory --------------------------------------------------------------------------------------------------------


def reset_peak() -> bool:
    """Reset this process's peak resident set (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_gb(pid: str = "self") -> float | None:
    """The peak resident set (VmHWM) of a process, in GB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        return None
    return None


def rss_gb(pid: int) -> float:
    """The current resident set of a process, in GB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def available_gb() -> float:
    """MemAvailable of the machine, in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GB
    return float("inf")


def run_bounded(command: list[str], *, timeout: float, cap_gb: float, reserve_gb: float, env: dict,
                log: Path) -> dict:
    """Run ``command`` as a child, stopping it past ``timeout`` s, past ``cap_gb`` resident, or when the machine
    has under ``reserve_gb`` available; return its exit status, wall time, peak memory and why it was stopped."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stopped, polled = "", 0.0

        def watch() -> None:
            nonlocal stopped, polled
            while child.poll() is None:
                resident = rss_gb(child.pid)
                polled = max(polled, resident)
                if time.perf_counter() - started > timeout:
                    stopped = f"stopped after the {timeout:.0f} s time cap"
                elif resident > cap_gb:
                    stopped = f"stopped at {resident:.1f} GB resident, over the {cap_gb:g} GB cap"
                elif available_gb() < reserve_gb:
                    stopped = (f"stopped at {resident:.1f} GB resident: the machine had under {reserve_gb:.1f} GB "
                               "available (shared machine)")
                if stopped:
                    os.killpg(child.pid, signal.SIGKILL)
                    return
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
    return {"exit_code": child.returncode, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gb": round(max(usage.ru_maxrss * 1024 / GB, polled), 2), "stopped": stopped,
            "log_tail": log.read_text(errors="replace")[-1500:]}


# --- the stages, in a worker process -------------------------------------------------------------------------------


class StageLog:
    """Appends one JSON line per measured stage, so a worker that dies keeps what it measured."""

    def __init__(self, path: Path, arch: str, classes: int) -> None:
        self.path, self.arch, self.classes = path, arch, classes

    def measure(self, stage: str, run, **fields) -> object:
        """Time ``run()`` with its peak memory; record it (or its error) and return its value."""
        import torch

        exact = reset_peak()
        started = time.perf_counter()
        record = {"arch": self.arch, "classes": self.classes, "stage": stage, **fields}
        try:
            value = run()
        except Exception as error:  # noqa: BLE001 - a failing stage is a result to record, not a crash
            record.update(status="failed", error=f"{type(error).__name__}: {str(error)[:300]}",
                          seconds=round(time.perf_counter() - started, 3))
            self.write(record)
            return None
        record.update(status="ok", seconds=round(time.perf_counter() - started, 3),
                      peak_rss_gb=round(peak_gb() or 0.0, 2), peak_is_stage_only=exact)
        if torch.cuda.is_available():
            record["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / GB, 2)
            torch.cuda.reset_peak_memory_stats()
        if isinstance(value, dict):
            record.update(value.pop("_record", {}))
        self.write(record)
        return value

    def write(self, record: dict) -> None:
        """Append one line (the architecture and class count added)."""
        record = {"arch": self.arch, "classes": self.classes, **record}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def _kwargs_for(function, **candidates) -> dict:
    """The candidates ``function`` accepts: the stage APIs gain options (device, chunking) as they grow."""
    import inspect

    accepted = inspect.signature(function).parameters
    return {k: v for k, v in candidates.items() if k in accepted}


def worker(args: argparse.Namespace) -> None:
    """Measure every stage of one architecture at one class count; one JSON line per stage to ``args.log``."""
    import torch

    torch.set_num_threads(args.threads)
    directory, count = Path(args.model_dir), args.worker_classes
    log = StageLog(Path(args.stage_log), args.worker_arch, count)
    classes, short = tuple(class_names(count)), args.steps
    if args.with_load:
        _measure_load(log, directory, args.worker_arch)
    from cbpt_guard.intake import load_checkpoint

    loaded = load_checkpoint(directory)
    model = loaded.model
    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.probes import procedural_probes

    if count <= args.embed_max_classes or args.worker_arch in args.embed_all:
        classifier = log.measure("class embeddings", lambda: build_classifier(model, classes, TEMPLATES),
                                 note=f"{count} prompts, {len(TEMPLATES)} template")
    else:
        classifier = _stand_in_classifier(model, count)
        log.write({"stage": "class embeddings", "status": "not run",
                   "error": f"over --embed-max-classes {args.embed_max_classes}: the cost is linear in the "
                            "prompts (see the smaller counts); the stages below use random unit class "
                            "embeddings, which change nothing they cost"})
    if classifier is None:
        return
    size = loaded.report.image_size[0]
    probes = procedural_probes(max(args.batch, args.anomaly_probes, 8), size, seed=0)
    pixels = probes.images
    if args.with_load:  # the first class count: the stages whose cost the class count barely changes
        _measure_inversions(log, classifier, pixels, short, args.batch)
    _measure_anomaly(log, model, classifier, classes, probes, args.anomaly_probes)
    if count <= args.cbpt_max_classes:
        _measure_cbpt(log, model, classifier, classes, pixels, args)
    else:
        log.write({"stage": "CBPT per step", "status": "not run",
                   "error": f"over --cbpt-max-classes {args.cbpt_max_classes} (a step costs minutes per 100 "
                            "classes here): see the largest class count measured"})
    if args.with_load:
        _measure_export(log, classifier, classes, Path(args.work) / "onnx" / f"{args.worker_arch}-{count}")


def _stand_in_classifier(model, count: int):
    """A zero-shot classifier over ``count`` random unit class embeddings (seeded): for timing only."""
    import torch

    from cbpt_guard.classifier import ZeroShotClassifier, class_embeddings

    generator = torch.Generator().manual_seed(count)
    width = class_embeddings(model, ["x"], TEMPLATES).shape[1]  # the embedding width, however the model names it
    return ZeroShotClassifier(model, torch.randn(count, width, generator=generator))  # (C, d), normalised there


def _measure_load(log: StageLog, directory: Path, arch: str) -> None:
    """Intake and the plain baseline, alternated twice, after one read that warms the page cache for both."""
    import gc

    import open_clip  # imported ahead, so neither side's first timing pays for imports
    import safetensors.torch  # noqa: F401

    import cbpt_guard.intake.loader  # noqa: F401

    weights = directory / "open_clip_model.safetensors"
    with weights.open("rb") as stream:
        while stream.read(1 << 24):
            pass

    def baseline() -> dict:
        from safetensors.torch import load_file

        state = load_file(str(weights))
        model = open_clip.create_model(arch)
        del state, model
        return {}

    def intake() -> dict:
        from cbpt_guard.intake import load_checkpoint

        loaded = load_checkpoint(directory)
        size = round(weights.stat().st_size / 1e6)
        return {"_record": {"parameters": loaded.report.parameter_count, "file_mb": size}}

    for rep in range(2):
        for name, run in (("load baseline", baseline), ("load (intake)", intake)):
            gc.collect()
            log.measure(name, run, repeat=rep,
                        note="safetensors.torch.load_file + open_clip.create_model" if name == "load baseline"
                        else "hashing, scanning, header validation, loading, building the model")


def _measure_inversions(log: StageLog, classifier, pixels, steps: int, batch: int) -> None:
    from cbpt_guard.detect.budget import InversionBudget
    from cbpt_guard.detect.inversion import invert

    budget = InversionBudget(steps=steps, batch_size=batch, check_every=steps, check_size=batch)
    scale = DEFAULT_STEPS * DEFAULT_BATCH / batch

    def family_run(family: str, toward=None):
        def run() -> dict:
            result = invert(classifier, pixels, family, budget, 1, **({"toward": toward} if toward is not None else {}))
            per_step = result.seconds / max(result.steps_run, 1)
            return {"_record": {"steps": result.steps_run, "batch": batch, "per_step_s": round(per_step, 3)}}
        return run

    for family in ("patch", "additive", "warp"):
        value = log.measure(f"inversion: {family}", family_run(family), how="per step x 300 steps x (32 / batch)")
        _extrapolate(log, value, scale)
    aimed = classifier.text[0]
    value = log.measure("targeted inversion", family_run("patch", aimed),
                        how="per step x 150 steps x 4 classes x (32 / batch)")
    _extrapolate(log, value, DEFAULT_TARGETED * (DEFAULT_STEPS // 2) * DEFAULT_BATCH / batch)


def _extrapolate(log: StageLog, value, factor: float) -> None:
    """Add the default budget's extrapolated cost to the stage's line just written."""
    del value  # the stage's line holds what is needed; a failed stage has no per-step figure
    lines = log.path.read_text().splitlines()
    record = json.loads(lines[-1])
    if record.get("status") != "ok" or "per_step_s" not in record:
        return
    record["default_budget_s"] = round(record["per_step_s"] * factor, 1)
    log.path.write_text("\n".join(lines[:-1] + [json.dumps(record)]) + "\n")


def _measure_anomaly(log: StageLog, model, classifier, classes, probes, anomaly_probes: int) -> None:
    from cbpt_guard.detect.budget import DetectBudget
    from cbpt_guard.detect.run import gather_evidence

    budget = DetectBudget(**_kwargs_for(DetectBudget, families=(), probes=anomaly_probes, anomaly_steps=1,
                                        anomaly_probes=anomaly_probes, targeted_classes=0))

    def run() -> dict:
        evidence = gather_evidence(model, classes, TEMPLATES, probes=probes, budget=budget,
                                   text_embeddings=classifier.text)
        return {"_record": {"steps": 1, "probes": anomaly_probes, "per_step_s": round(evidence.seconds, 3)}}

    value = log.measure("per-class anomaly search", run,
                        how="per step x 30 steps x (12 probes / probes); one step includes the screen, if any")
    _extrapolate(log, value, DEFAULT_ANOMALY_STEPS * DEFAULT_ANOMALY_PROBES / anomaly_probes)


def _measure_cbpt(log: StageLog, model, classifier, classes, pixels, args: argparse.Namespace) -> None:
    from cbpt_guard.detect.budget import InversionBudget
    from cbpt_guard.detect.inversion import invert
    from cbpt_guard.purify.trainer import pseudo_labels, tune_prompts

    trigger = invert(classifier, pixels, "patch", InversionBudget(steps=1, batch_size=args.batch), 1).trigger
    labels = pseudo_labels(classifier, pixels)
    steps = args.cbpt_steps

    def run() -> dict:
        started = time.perf_counter()
        tune_prompts(model, classes, TEMPLATES, pixels, labels, [trigger], steps=steps, seed=0)
        per_step = (time.perf_counter() - started) / steps
        return {"_record": {"steps": steps, "images": len(pixels), "per_step_s": round(per_step, 3)}}

    value = log.measure("CBPT per step", run, how="per step x 100 steps (images as measured)")
    _extrapolate(log, value, DEFAULT_CBPT_STEPS)


def _measure_export(log: StageLog, classifier, classes, out: Path) -> None:
    from cbpt_guard.export import export_classifier

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.onnx"):
        stale.unlink()

    def run() -> dict:
        result = export_classifier(classifier, out / "classifier.onnx", classes=tuple(classes),
                                   provenance={"source_checkpoint_sha256": "0" * 64, "prompts_sha256": "hand-written"})
        return {"_record": {"provider": result.provider, "max_abs_diff": result.max_abs_diff,
                            "parity_passed": result.passed, "images_compared": result.images_compared}}

    log.measure("export and parity", run, note="ONNX export, then onnxruntime vs PyTorch logits")


# --- the driver ----------------------------------------------------------------------------------------------------


def child_env(threads: int) -> dict:
    """The children's environment: this tree first on the path, offline, ``threads`` threads."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    return env


def run_stages(args: argparse.Namespace, work: Path, archs: tuple[str, ...]) -> list[dict]:
    """One worker per architecture and class count; its stage lines, or the reason it stopped."""
    rows: list[dict] = []
    for arch in archs:
        directory = make_model(arch, work)
        steps, batch = (1, 2) if arch in args.large else (args.steps, args.batch)
        counts = args.large_classes if arch in args.large else args.classes
        for index, count in enumerate(counts):
            stage_log = work / f"stages-{arch}-{count}.jsonl"
            stage_log.unlink(missing_ok=True)
            command = [sys.executable, __file__, "--worker", "--worker-arch", arch, "--worker-classes", str(count),
                       "--model-dir", str(directory), "--stage-log", str(stage_log), "--work", str(work),
                       "--steps", str(steps), "--batch", str(batch), "--threads", str(args.threads),
                       "--anomaly-probes", str(args.anomaly_probes), "--cbpt-steps", str(args.cbpt_steps),
                       "--cbpt-max-classes", str(args.cbpt_max_classes),
                       "--embed-max-classes", str(args.embed_max_classes), "--embed-all", ",".join(args.embed_all)
                       ] + (["--with-load"] if index == 0 else [])
            print(f"stages: {arch}, {count} classes", flush=True)
            timeout = args.large_worker_timeout if arch in args.large else args.worker_timeout
            outcome = run_bounded(command, timeout=timeout, cap_gb=args.memory_cap_gb,
                                  reserve_gb=args.reserve_gb, env=child_env(args.threads),
                                  log=work / f"stages-{arch}-{count}.log")
            lines = [json.loads(line) for line in stage_log.read_text().splitlines()] if stage_log.exists() else []
            rows.extend(lines)
            if outcome["exit_code"] != 0 or outcome["stopped"]:
                rows.append({"arch": arch, "classes": count, "stage": "(worker)", "status": "stopped",
                             "error": outcome["stopped"] or f"exit {outcome['exit_code']}: "
                                      f"{outcome['log_tail'][-400:]}",
                             "after_stage": lines[-1]["stage"] if lines else None,
                             "seconds": outcome["seconds"], "peak_rss_gb": outcome["peak_rss_gb"]})
    return rows


def run_checks(args: argparse.Namespace, work: Path, *, policy: Path | None, arch: str, counts, device: str | None,
               timeout: float) -> list[dict]:
    """The full ``cbpt-guard check`` (zero-data) of ``arch`` at each class count, each in a bounded child."""
    directory = make_model(arch, work)
    rows = []
    for count in counts:
        out = work / "checks" / f"{arch}-{count}"
        command = [sys.executable, "-m", "cbpt_guard", "check", str(directory), "--classes",
                   str(classes_file(count, work)), "--out", str(out), "--overwrite"]
        if policy is not None:
            command += ["--policy", str(policy)]
        if device is not None and supports_device():
            command += ["--device", device]
        print(f"check: {arch}, {count} classes", flush=True)
        outcome = run_bounded(command, timeout=timeout, cap_gb=args.memory_cap_gb, reserve_gb=args.reserve_gb,
                              env=child_env(args.threads), log=work / f"check-{arch}-{count}.log")
        row = {"arch": arch, "classes": count, "policy": policy.name if policy else "default",
               "device_flag": device if device is not None and supports_device() else None, **outcome}
        verdict = out / "verdict.json"
        if verdict.exists() and not outcome["stopped"]:
            data = json.loads(verdict.read_text())
            decision = data.get("decision") or {}
            row.update(verdict=True, action=decision.get("action"), exit_code_verdict=decision.get("exit_code"),
                       timings=data.get("timings", {}), device=data.get("device"),
                       parity_provider=(data.get("export") or {}).get("provider"),
                       skipped=[s.get("name") for s in data.get("skipped", []) if isinstance(s, dict)])
        else:
            row["verdict"] = False
        row["internal_error"] = outcome["exit_code"] == 2
        row["within_16_gb"] = outcome["peak_rss_gb"] <= 16
        rows.append(row)
    return rows


def supports_device() -> bool:
    """Whether this cbpt-guard's ``check`` takes ``--device`` (without it, a GPU machine's check runs on its CPU)."""
    shown = subprocess.run([sys.executable, "-m", "cbpt_guard", "check", "--help"], capture_output=True, text=True,
                           env=child_env(1), check=False)
    return "--device" in shown.stdout


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "load_average": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- the report ----------------------------------------------------------------------------------------------------


def summary(stages: list[dict]) -> dict:
    """The bars this benchmark measures: intake vs the baseline, and the anomaly search's growth with classes."""
    out: dict = {}
    for arch in sorted({r["arch"] for r in stages}):
        loads = {name: [r["seconds"] for r in stages
                        if r["arch"] == arch and r["stage"] == name and r["status"] == "ok"]
                 for name in ("load (intake)", "load baseline")}
        if all(loads.values()):
            ratio = min(loads["load (intake)"]) / min(loads["load baseline"])
            out[f"intake_vs_baseline_{arch}"] = {"intake_s": loads["load (intake)"],
                                                 "baseline_s": loads["load baseline"],
                                                 "ratio_best": round(ratio, 2), "within_2x": ratio <= 2}
        anomaly = {r["classes"]: r for r in stages
                   if r["arch"] == arch and r["stage"] == "per-class anomaly search" and r["status"] == "ok"}
        if 100 in anomaly and 1000 in anomaly:
            ratio = anomaly[1000]["seconds"] / anomaly[100]["seconds"]
            out[f"anomaly_1000_vs_100_{arch}"] = {"ratio": round(ratio, 2), "within_3x": ratio <= 3}
        elif 100 in anomaly:
            out[f"anomaly_1000_vs_100_{arch}"] = {"ratio": None, "within_3x": False,
                                                  "why": "the 1,000-class anomaly search did not finish"}
    return out


def render(data: dict) -> str:
    """SCALE.md from scale.json's data (and gpu_check.json's, when there is one)."""
    settings = data["settings"]
    lines = [
        "# Cost at real size", "",
        "Written by `benchmarks/scale.py` (`python benchmarks/scale.py`); nothing here is typed by hand.",
        "Models: open_clip architectures made by the benchmark with **random weights** at 224 px. Random weights "
        "are fine for cost, not for efficacy: no detection or purification outcome below means anything about "
        "a real model.", "",
        f"Machine: {data['machine']['cpu_count']} CPU cores, torch {data['machine']['torch']}, "
        f"load average at the start {tuple(round(x, 1) for x in data['machine']['load_average'])} (a shared "
        "machine: other jobs ran beside this one, so seconds are upper bounds). "
        f"Short budget: {settings['steps']} inversion steps at batch {settings['batch']}, "
        f"{settings['anomaly_probes']} anomaly probes and 1 anomaly step, {settings['cbpt_steps']} CBPT steps, "
        f"{settings['threads']} thread(s).", "",
    ]
    lines += ["## Notes", "",
              "- Inversion families, targeted inversion and the export are measured at the first class count only "
              "(the class count changes only their logits' width); the class embeddings and the anomaly search at "
              "every count; CBPT up to `--cbpt-max-classes` (a step runs the text encoder over every class's prompt).",
              f"- {', '.join(settings['large'])}: 1 inversion step of batch 2 and "
              f"{', '.join(str(c) for c in settings['large_classes'])} classes only, to bound the run; "
              f"workers and check rows ran {settings['lanes'] + 1} at a time, each capped at "
              f"{settings['worker_timeout']:.0f} s (a worker; {settings['large_worker_timeout']:.0f} s for the "
              f"large ones) and {settings['check_timeout']:.0f} s (a check).",
              "- Class embeddings over `--embed-max-classes` are not computed for the architectures outside "
              "`--embed-all`; their later stages use random unit class embeddings (which change nothing they cost).",
              "- `policies/cpu-large-models.calibration.json` was fitted with `cbpt-guard calibrate examples/clean "
              "--out policies/cpu-large-models.calibration.json --steps 5 --batch-size 4 --targeted 1` (the "
              "policy's budget); it describes the small example's family, not these models.",
              "- Peak memory of a check row is its child's `ru_maxrss` (and a 0.25 s poll of its resident set, which "
              "stops it at the cap); a worker's stage peak is its VmHWM after a reset at the stage's start.", ""]
    lines += _summary_lines(data.get("summary", {}))
    lines += _stage_table(data.get("stages", []))
    lines += _check_table(data.get("checks", []), "Full `cbpt-guard check` rows (zero-data, policy "
                          "`cpu-large-models`)")
    gpu = data.get("gpu_check")
    if gpu:
        lines += ["", f"## GPU check ({gpu['machine'].get('gpu', 'no GPU')})", ""]
        lines += _check_table(gpu["checks"], "Full default `check` on one GPU")
    else:
        lines += ["", "## GPU check", "", "Not run yet: `benchmarks/gpu_check.sh WHEELS_DIR` on a machine with one "
                  "CUDA GPU writes `benchmarks/results/gpu_check.json`, which this file then shows."]
    return "\n".join(lines) + "\n"


def _summary_lines(bars: dict) -> list[str]:
    lines = ["## Bars", ""]
    for key, value in bars.items():
        if key.startswith("intake_vs_baseline_"):
            lines.append(f"- Intake of {key.removeprefix('intake_vs_baseline_')}: best {min(value['intake_s']):.2f} s "
                         f"vs the plain load + create_model {min(value['baseline_s']):.2f} s: "
                         f"{value['ratio_best']}x ({'within' if value['within_2x'] else 'NOT within'} 2x).")
        else:
            arch = key.removeprefix("anomaly_1000_vs_100_")
            if value["ratio"] is None:
                lines.append(f"- Anomaly search of {arch}, 1,000 vs 100 classes: not measured ({value['why']}).")
            else:
                lines.append(f"- Anomaly search of {arch}, 1,000 vs 100 classes: {value['ratio']}x "
                             f"({'within' if value['within_3x'] else 'NOT within'} 3x).")
    return lines + [""]


def _stage_table(stages: list[dict]) -> list[str]:
    lines = ["## Stages under the short budget", "",
             "Peak memory is the worker process's peak resident set during the stage (model included). "
             "\"Default budget\" extrapolates the per-step cost linearly to the default budget (how: last column).", "",
             "| model | classes | stage | status | seconds | per step (s) | peak GB | default budget (s) "
             "| how / note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in stages:
        note = r.get("how") or r.get("note") or ""
        if r.get("provider"):
            note = f"parity on {r['provider']}, max |diff| {r['max_abs_diff']:.2e}"
        if r["status"] != "ok":
            note = (r.get("error") or "")[:160].replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['arch']} | {r['classes']} | {r['stage']} | {r['status']} | {r.get('seconds', '')} | "
                     f"{r.get('per_step_s', '')} | {r.get('peak_rss_gb', '')} | {r.get('default_budget_s', '')} | "
                     f"{note} |")
    return lines + [""]


def _check_table(checks: list[dict], title: str) -> list[str]:
    lines = [f"## {title}", "",
             "| model | classes | exit code | Verdict | action | seconds | peak GB (child) | stopped | stage seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in checks:
        timings = ", ".join(f"{k} {v}" for k, v in (r.get("timings") or {}).items())
        lines.append(f"| {r['arch']} | {r['classes']} | {r['exit_code']} | {'yes' if r['verdict'] else 'no'} | "
                     f"{r.get('action') or ''} | {r['seconds']} | {r['peak_rss_gb']} | {r['stopped'] or ''} | "
                     f"{timings} |")
    if any(r.get("parity_provider") for r in checks):
        lines += ["", "Parity ran on: " + ", ".join(sorted({r['parity_provider'] for r in checks
                                                             if r.get('parity_provider')})) + "."]
    return lines + [""]


# --- entry ---------------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=lambda s: tuple(s.split(",")), default=ARCHS)
    parser.add_argument("--classes", type=lambda s: tuple(int(c) for c in s.split(",")), default=CLASS_COUNTS)
    parser.add_argument("--check-classes", type=lambda s: tuple(int(c) for c in s.split(",") if c),
                        default=CLASS_COUNTS)
    parser.add_argument("--no-stages", action="store_true")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="inversion steps of the short budget")
    parser.add_argument("--batch", type=int, default=4, help="inversion batch of the short budget")
    parser.add_argument("--anomaly-probes", type=int, default=1)
    parser.add_argument("--cbpt-steps", type=int, default=1)
    parser.add_argument("--large", type=lambda s: tuple(s.split(",")), default=("ViT-B-16", "ViT-L-14"),
                        help="architectures measured at 1 inversion step of batch 2 and --large-classes, to bound "
                             "the run")
    parser.add_argument("--large-classes", type=lambda s: tuple(int(c) for c in s.split(",")), default=(10, 1000))
    parser.add_argument("--lanes", type=int, default=2, help="stage workers running at once (besides the checks)")
    parser.add_argument("--cbpt-max-classes", type=int, default=10)
    parser.add_argument("--embed-max-classes", type=int, default=100,
                        help="class embeddings above this count are not computed (random unit ones stand in)")
    parser.add_argument("--embed-all", type=lambda s: tuple(s.split(",")), default=(),
                        help="architectures whose class embeddings are computed at every count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker-timeout", type=float, default=300)
    parser.add_argument("--large-worker-timeout", type=float, default=420)
    parser.add_argument("--check-timeout", type=float, default=900)
    parser.add_argument("--memory-cap-gb", type=float, default=16)
    parser.add_argument("--reserve-gb", type=float, default=3.0,
                        help="stop a child when the machine has less than this available")
    parser.add_argument("--work", default="/tmp/cbpt-scale")
    parser.add_argument("--policy", default=str(CPU_POLICY))
    parser.add_argument("--gpu-check", action="store_true", help="the prepared GPU check (benchmarks/gpu_check.sh)")
    parser.add_argument("--gpu-deadline-s", type=float, default=420,
                        help="the GPU check's whole run, models included; each check gets its share of what is left")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the results")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-arch", help=argparse.SUPPRESS)
    parser.add_argument("--worker-classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--stage-log", help=argparse.SUPPRESS)
    parser.add_argument("--with-load", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def gpu_check(args: argparse.Namespace, work: Path) -> dict:
    """The full default check on CUDA: ViT-B-32 with 1,000 classes and ViT-L-14 with 100 (export included)."""
    started, rows = time.perf_counter(), []
    for arch, count, share in (("ViT-B-32", 1000, 0.4), ("ViT-L-14", 100, 1.0)):
        make_model(arch, work)
        left = args.gpu_deadline_s - (time.perf_counter() - started) - 15  # 15 s to write the results
        rows += run_checks(args, work, policy=None, arch=arch, counts=(count,), device="cuda",
                           timeout=max(30.0, min(args.check_timeout, share * left)))
    return {"machine": machine(), "checks": rows, "deadline_s": args.gpu_deadline_s}


def main(argv: list[str] | None = None) -> None:
    """Run what the flags select and write (or print) the results."""
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.gpu_check:
        result = gpu_check(args, work)
        if args.no_write:
            print(json.dumps(result, indent=1))
            return
        GPU_RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        if previous:
            previous["gpu_check"] = result
            REPORT.write_text(render(previous))
        return
    data = {"machine": machine(),
            "settings": {k: getattr(args, k) for k in ("archs", "large", "classes", "check_classes", "steps", "batch",
                                                         "anomaly_probes", "cbpt_steps", "cbpt_max_classes",
                                                         "embed_max_classes", "embed_all", "large_classes",
                                                         "lanes",
                                                         "threads", "memory_cap_gb", "worker_timeout",
                                                         "large_worker_timeout",
                                                         "check_timeout", "policy")}}
    checks: list[dict] = []

    def check_rows() -> None:
        checks.extend(run_checks(args, work, policy=Path(args.policy), arch="ViT-B-32", counts=args.check_classes,
                                 device=None, timeout=args.check_timeout))

    # The check rows run beside the stage workers: on this shared machine that cuts the run's wall time, and
    # each child's figures are its own (its seconds are upper bounds either way).
    beside = threading.Thread(target=check_rows) if not args.no_checks else None
    if beside is not None:
        make_model("ViT-B-32", work)  # before both threads could race to make it
        beside.start()
    lanes = [args.archs[i::args.lanes] for i in range(args.lanes)] if not args.no_stages else []
    results: list[list[dict]] = [[] for _ in lanes]

    def lane(index: int) -> None:
        results[index] = run_stages(args, work, lanes[index])

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(len(lanes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data["stages"] = [row for arch in args.archs for lane_rows in results for row in lane_rows if row["arch"] == arch]
    if beside is not None:
        beside.join()
    data["checks"] = checks
    data["summary"] = summary(data["stages"])
    if GPU_RESULTS.exists():
        data["gpu_check"] = json.loads(GPU_RESULTS.read_text())
    if args.no_write:
        print(render(data))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    REPORT.write_text(render(data))


if __name__ == "__main__":
    sys.exit(main())
