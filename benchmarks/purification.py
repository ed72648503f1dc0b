"""Purification benchmark: CBPT against no defence, full fine-tuning and plain prompt tuning on the zoo.

Usage (after `cbpt-guard zoo build --out ZOO ...`):

    OMP_WAIT_POLICY=PASSIVE python benchmarks/purification.py --zoo ZOO/vit --out benchmarks \
        --tiers 16,4,0 --models all --threads 2 [--cache /work/cache/purify]

For every backdoored zoo model it runs detection once (default budget, seed 0,
zero-data probes) and caches the inverted dummy triggers; then, per data tier,
each method runs in a fresh subprocess so that its wall time and peak memory
are its own: ``none`` (the backdoored model as shipped), ``finetune`` (all
weights, benchmarks/full_finetune.py), ``prompt`` (prompt tuning without the
trigger term) and ``cbpt`` (prompt tuning with the dummy triggers chosen by
:func:`cbpt_guard.purify.triggers_choice.select_dummy_triggers`). CA and the
real trigger's ASR are measured on the zoo's test split with the zoo's own
functions. Before that, the fine-tuning baseline's learning rate is picked on
two development models; after it, the comparisons in :data:`COMPARISONS` run,
each changing one choice of the default CBPT run. Every run is
cached, so an interrupted benchmark resumes. It writes OUT/PURIFICATION.md and
OUT/results/purification.json; nothing in them is typed by hand. The real
trigger is only ever used to *measure*.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # full_finetune.py, evidence_cache.py beside this file

from evidence_cache import DETECTOR_SOURCES, cached_evidence, cached_triggers, source_digest, weights_digest  # noqa: E402
from full_finetune import FinetuneSettings, full_finetune  # noqa: E402

from cbpt_guard.classifier import ZeroShotClassifier, build_classifier  # noqa: E402
from cbpt_guard.policy.schema import PurificationSettings  # noqa: E402
from cbpt_guard.purify.trainer import TRIGGER_STRENGTH  # noqa: E402
from cbpt_guard_zoo import data as data_lib  # noqa: E402
from cbpt_guard_zoo.build import CLASSES, TRUTH_NAME, ZooRecipe, load_test_split, real_trigger  # noqa: E402
from cbpt_guard_zoo.report import ASR_BAR as ZOO_ASR_BAR, CA_GAP_BAR as ZOO_CA_GAP_BAR  # noqa: E402
from cbpt_guard_zoo.train import attack_success_rate, clean_accuracy  # noqa: E402

METHODS = ("none", "finetune", "prompt", "cbpt")
POLICY_PURIFICATION = PurificationSettings()
"""The policy schema's purification defaults: the single source of the CBPT settings benchmarked."""
SHOT_POOL = 16  # the zoo's few-shot split holds 16 images per class
ASR_BAR = 0.02
CA_DROP_BAR = 0.02
TIME_RATIO_BAR = 10.0
COMPARISONS = {
    "evidence-rule": ("Which dummy triggers: every family (default) vs the evidence rule (families with z >= 2, "
                      "else the top one)", {"rule": "evidence"}),
    "reclassify": ("The backdoor term: leave the drawn class (default) vs METHOD.md's cross-entropy toward the "
                   "clean label", {"backdoor": "reclassify"}),
    "no-distill": ("Distillation of the clean predictions: on (default) vs off", {"l_distill": 0.0}),
    "strength-1": ("Dummy stamps: at strength 2 (default) vs as detection inverted them (strength 1)",
                   {"strength": 1.0}),
    "leave-any": ("Which stamped copies must leave: those drawn to the trigger's target (default) vs every copy "
                  "drawn off its own class", {"leave": "any"}),
    "no-margin": ("The leave term's margin: the default vs none", {"margin": 0.0}),
    "first-leave": ("The leave term as first measured (every drawn copy, no margin, l_bd 1, l_distill 10) vs the "
                    "default", {"leave": "any", "margin": 0.0, "l_bd": 1.0, "l_distill": 10.0}),
}
"""Each comparison changes one choice of the default CBPT run (a trigger ``rule`` or CbptSettings fields)."""


@dataclass(frozen=True)
class CbptSettings:
    """The CBPT knobs the benchmark runs with: the policy's keys read from the policy schema's defaults.

    A policy that leaves ``purification:`` out runs these settings; the rest
    are ``tune_prompts``' own (not policy keys).
    """

    n_ctx: int = POLICY_PURIFICATION.n_ctx
    steps: int = POLICY_PURIFICATION.steps
    lr: float = POLICY_PURIFICATION.lr
    l_bd: float = POLICY_PURIFICATION.loss_weights.l_bd
    l_drift: float = POLICY_PURIFICATION.loss_weights.l_drift
    l_distill: float = POLICY_PURIFICATION.loss_weights.l_distill
    margin: float = POLICY_PURIFICATION.margin
    leave: str = "target"
    strength: float = TRIGGER_STRENGTH  # the product's own amplification, not a copy of its value
    backdoor: str = "leave"
    batch_size: int | None = None  # the whole few-shot set in every step
    optimiser: str = "adamw"
    seed: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# --- data --------------------------------------------------------------------------------------

def fewshot_set(shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``shots`` images per class of the zoo's few-shot split (shapes, then digits). (N, 3, 32, 32), (N,).

    The split is disjoint from the zoo's training and test images. The 4-shot
    set is a subset of the 16-shot set.
    """
    shapes = data_lib.make_split("fewshot", SHOT_POOL * len(data_lib.SHAPE_CLASSES), 32, 0)
    digits = data_lib.make_digits(32, 0, "fewshot")
    images = torch.cat([shapes.images, digits.images])
    labels = torch.cat([shapes.labels, digits.labels + len(data_lib.SHAPE_CLASSES)])
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        keep[(labels == label).nonzero().squeeze(1)[:shots]] = True
    return images[keep], labels[keep]


def test_set(recipe: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The zoo's test split, as the zoo measured its models on it."""
    split = load_test_split(ZooRecipe.from_dict(recipe))
    return split.test_images, split.test_labels


# --- detection: the dummy triggers, cached -------------------------------------------------------

@dataclass
class CachedEvidence:
    """What the benchmark keeps of one detection run: per family its stats (from the cache's JSON) and its trigger.

    ``triggers`` maps each family to its inverted trigger in detection's order,
    as :attr:`cbpt_guard.detect.run.Evidence.triggers` does, which is what
    :func:`~cbpt_guard.purify.triggers_choice.select_dummy_triggers` reads.
    """

    families: list[dict]
    triggers: dict
    zs: dict[str, float]
    score: float
    threshold: float
    seconds: float


def detection_evidence(model_dir: Path, cache: Path) -> CachedEvidence:
    """Detection's evidence for one zoo model (default budget, zero-data probes), scored with the shipped calibration.

    The detection run itself is shared with benchmarks/detection.py (see
    evidence_cache.py); it is scored here, so a re-fitted calibration needs no
    new detection.
    """
    from cbpt_guard.detect.api import default_calibration
    from cbpt_guard.detect.calibration import score

    summary = cached_evidence(model_dir, cache)
    triggers = cached_triggers(model_dir, cache)
    calibration = default_calibration()
    value, zs = score(summary["features"], calibration)
    families = [{**family, "z": zs.get(family["family"])} for family in summary["families"]]
    in_order = {family["family"]: triggers[family["family"]] for family in summary["families"]}
    return CachedEvidence(families, in_order, zs, value, calibration.threshold, summary["seconds"])


# --- one method on one model and tier ------------------------------------------------------------

def tier_data(tier: int, classifier: ZeroShotClassifier, balanced: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Training images and labels of a tier, and how the labels were obtained.

    ``tier`` is the shots per class; 0 is the zero-shot tier: the 16-shot
    images with their labels dropped, labelled by the backdoored model's own
    predictions (pseudo-labels, METHOD.md section 2), ``balanced`` over the
    classes (the pool is an even few-shot split; see ``pseudo_labels``).
    """
    from cbpt_guard.purify.trainer import pseudo_labels

    if tier > 0:
        images, labels = fewshot_set(tier)
        return images, labels, f"{tier} labelled images per class"
    images, _ = fewshot_set(SHOT_POOL)
    kind = "class-balanced predictions" if balanced else "top-1 predictions"
    return (images, pseudo_labels(classifier, images, balanced=balanced),
            f"pseudo-labels: the backdoored model's {kind} on the 16-shot images, labels dropped")


def evaluate(classifier: ZeroShotClassifier, truth: dict, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """CA, the real trigger's ASR toward the real target (the zoo's own measures) and the natural rate.

    The natural rate is the ASR of no trigger at all (unstamped non-target
    images sent to the target): the floor a perfect purification comes down to.
    """
    trigger = real_trigger(truth["attack"], truth["trigger_params"])
    target = CLASSES.index(truth["target"])
    return {"ca": clean_accuracy(classifier, images, labels),
            "asr": attack_success_rate(classifier, images, labels, trigger, target),
            "natural": attack_success_rate(classifier, images, labels, lambda pixels: pixels, target)}


def _resident_bytes() -> int:
    """The process's current resident set size, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _settle_memory() -> None:
    """Free what can be freed, hand glibc's free heap back to the kernel, and restart the peak-RSS mark.

    Without the restart (``5`` into /proc/self/clear_refs, Linux 4.0+), a
    transient peak from before the window (loading, the warm-up) would be
    counted as the method's.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline is merely a little higher
        pass
    Path("/proc/self/clear_refs").write_text("5")


def _peak_resident_bytes() -> int:
    """The process's peak resident set size since the last :func:`_settle_memory` (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def chosen_families(evidence: CachedEvidence, rule: str) -> list[str]:
    """The families whose triggers CBPT trains against: the product's choice ("default": every one), or the rule's."""
    from cbpt_guard.purify.triggers_choice import EVIDENCE_Z, select_dummy_triggers

    return select_dummy_triggers(evidence.triggers, evidence.zs, min_z=EVIDENCE_Z if rule == "evidence" else None)


def choose_triggers(evidence: CachedEvidence, rule: str) -> list:
    """The dummy triggers for CBPT, most anomalous family first (see :func:`chosen_families`)."""
    return [evidence.triggers[family] for family in chosen_families(evidence, rule)]


def run_method(spec: dict) -> dict:
    """Run one method on one model's tier data; returns its metrics, seconds and peak memory.

    ``spec`` holds model_dir, tier, method, cache, cbpt and finetune settings,
    the trigger ``rule`` and ``balanced`` pseudo-labels. The measured window
    covers the method's own work only (for CBPT: image features of clean and
    stamped views, then the prompt tuning), not loading the model or the data,
    nor the evaluation. Peak memory is the growth of the process's peak
    resident set (VmHWM, restarted just before the window) over its resident
    size at the start of the window: torch's CPU tensors live in plain malloc'd memory, which
    tracemalloc does not see but RSS counts. Run it in a fresh process per
    method (``--worker``) so that no earlier method's peak hides this one.
    Before the window the same method runs two steps on four images (on a
    copy of the model), so code pages and lazily built state that any run of
    it touches once per process count in neither its time nor its memory.
    """
    from cbpt_guard.intake import load_checkpoint

    model_dir, tier, method = Path(spec["model_dir"]), spec["tier"], spec["method"]
    truth = json.loads((model_dir / TRUTH_NAME).read_text())
    loaded = load_checkpoint(model_dir)
    model, classes, templates = loaded.model, loaded.report.classes, loaded.report.templates
    test_images, test_labels = test_set(truth["recipe"])
    original = build_classifier(model, classes, templates)
    images, labels, label_source = tier_data(tier, original, spec.get("balanced", True))
    result = {"model": model_dir.name, "tier": tier, "method": method, "rule": spec.get("rule", "default"),
              "threads": torch.get_num_threads(),
              "images": len(images), "labels": label_source, "label_accuracy": None, "triggers": []}
    if tier == 0:
        result["label_accuracy"] = float((labels == fewshot_set(SHOT_POOL)[1]).float().mean())
    triggers = []
    if method.startswith("cbpt"):
        evidence = detection_evidence(model_dir, Path(spec["cache"]))
        triggers = choose_triggers(evidence, spec.get("rule", "default"))
        result["triggers"] = [t.family for t in triggers]
    if method != "none":  # page in the code and lazy state both methods need once per process; untimed
        _run(method, copy.deepcopy(model), classes, templates, images[:4], labels[:4], triggers,
             _warm_up(spec, method))
    _settle_memory()
    before = _resident_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    classifier, extra = _run(method, model, classes, templates, images, labels, triggers, spec)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _peak_resident_bytes()
    return result | extra | {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": max(0, peak - before),
                             **evaluate(classifier, truth, test_images, test_labels)}


def _run(method: str, model: torch.nn.Module, classes: tuple[str, ...], templates: tuple[str, ...],
         images: torch.Tensor, labels: torch.Tensor, triggers: list, spec: dict) -> tuple[ZeroShotClassifier, dict]:
    """The method itself: the classifier it leaves (and what CBPT reports about its triggers)."""
    from cbpt_guard.purify.trainer import tune_prompts

    if method == "none":
        return build_classifier(model, classes, templates), {}
    if method == "finetune":
        tuned, _ = full_finetune(model, classes, templates, images, labels, FinetuneSettings(**spec["finetune"]))
        return build_classifier(tuned, classes, templates), {}
    tuning = tune_prompts(model, classes, templates, images, labels, triggers if method == "cbpt" else [],
                          **spec["cbpt"])
    return (ZeroShotClassifier(model, tuning.class_embeddings),
            {"attractors": [[classes[i] for i in row] for row in tuning.attractors]})


def _warm_up(spec: dict, method: str) -> dict:
    """The same method's settings cut to two steps: enough to touch every code path once."""
    if method == "finetune":
        return dict(spec, finetune=dict(spec["finetune"], steps=2, warmup=1))
    return dict(spec, cbpt=dict(spec["cbpt"], steps=2))


# --- orchestration: one subprocess per measured run, every result cached ---------------------------

TIMED_SOURCES = ("benchmarks/full_finetune.py", "cbpt_guard/purify", *DETECTOR_SOURCES)
"""The code either side of the fine-tuning / CBPT time ratio runs. A run whose time enters the ratio (``timed``
in its spec) is keyed on all of it, so a change on either side re-runs both and the two are always timed in the
same invocation: fine-tuning runs cached on another day once made the ratio compare two states of this machine."""


def _cache_key(spec: dict) -> str:
    """A short digest of everything that decides a run's result: the method and what it reads."""
    used = {"none": (), "finetune": ("tier", "balanced", "finetune"), "prompt": ("tier", "balanced", "cbpt"),
            "cbpt": ("tier", "balanced", "cbpt", "rule")}[spec["method"]]
    sources = {"none": (), "finetune": ("benchmarks/full_finetune.py",),
               "prompt": ("cbpt_guard/purify",), "cbpt": ("cbpt_guard/purify", *DETECTOR_SOURCES)}[spec["method"]]
    if spec.get("timed"):
        sources = TIMED_SOURCES
    keyed = {"method": spec["method"], **{k: spec[k] for k in used},
             "weights": weights_digest(Path(spec["model_dir"])),  # a rebuilt zoo model is run again
             # the code a run executes, except this file's worker: delete the cache after changing how runs measure
             "sources": source_digest("cbpt_guard/classifier.py", "cbpt_guard_zoo/data.py", "cbpt_guard_zoo/attacks.py",
                                      *sources)}
    if "threads" in spec:  # a cost run at a thread count of its own (--cost-threads)
        keyed["threads"] = spec["threads"]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]


def cached_run(spec: dict, cache: Path, threads: int) -> dict:
    """The result of ``spec`` from the cache, or from a fresh ``--worker`` process (then cached)."""
    path = cache / Path(spec["model_dir"]).name / f"{spec['tier']}-{spec['method']}-{_cache_key(spec)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    # Passive OpenMP waits: on a CPU shared with other jobs, spinning threads made a 2-thread fine-tuning run
    # five times slower (wall and CPU time alike) than the same run with waiting threads asleep.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--threads", str(threads)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed for {path.name} of {spec['model_dir']}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started  # with interpreter start and evaluation
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def backdoored_models(zoo: Path, models: str) -> list[str]:
    """Names of the zoo's backdoored models, all or the comma-separated ``models``."""
    names = sorted(p.parent.name for p in zoo.glob(f"*/{TRUTH_NAME}")
                   if json.loads(p.read_text())["kind"] == "backdoored")
    if models == "all":
        return names
    wanted = models.split(",")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"not backdoored models of {zoo}: {', '.join(unknown)}")
    return [n for n in names if n in wanted]


FINETUNE_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def choose_finetune(args: argparse.Namespace, cbpt: CbptSettings) -> tuple[FinetuneSettings, dict]:
    """The baseline's learning rate, picked on development models at 16 shots: its fairest shot.

    Every rate in :data:`FINETUNE_LRS` runs on the ``--finetune-dev`` models;
    the pick is the lowest mean real-trigger ASR among the rates whose mean
    CA stays within the CA bar of the backdoored models' (ties: higher CA).
    """
    names = args.finetune_dev.split(",")
    base = {"cache": str(args.cache), "cbpt": cbpt.as_dict(), "rule": "default", "balanced": True,
            "tier": SHOT_POOL}
    sweep, seconds = {}, 0.0
    for lr in FINETUNE_LRS:
        spec = dict(base, finetune=FinetuneSettings(lr=lr).as_dict(), method="finetune")
        rows = [cached_run(dict(spec, model_dir=str(args.zoo / name)), args.cache, args.threads) for name in names]
        sweep[str(lr)] = {"ca": _mean([r["ca"] for r in rows]), "asr": _mean([r["asr"] for r in rows])}
        seconds += sum(r.get("process_seconds", 0.0) for r in rows)
    spec = dict(base, finetune=FinetuneSettings().as_dict(), method="none")
    before = _mean([cached_run(dict(spec, model_dir=str(args.zoo / name)), args.cache, args.threads)["ca"]
                    for name in names])
    allowed = [lr for lr, m in sweep.items() if before - m["ca"] <= CA_DROP_BAR] or list(sweep)
    best = min(allowed, key=lambda lr: (round(sweep[lr]["asr"], 4), -sweep[lr]["ca"]))
    return FinetuneSettings(lr=float(best)), {"models": names, "none_ca": before, "by_lr": sweep, "chosen": best,
                                              "seconds": seconds}


def run_all(args: argparse.Namespace, cbpt: CbptSettings, finetune: FinetuneSettings) -> dict:
    """Every run the report needs, per model: detection, the four methods per tier, and the comparisons."""
    names = backdoored_models(args.zoo, args.models)
    tiers = [int(t) for t in args.tiers.split(",")]
    base = {"cache": str(args.cache), "cbpt": cbpt.as_dict(), "finetune": finetune.as_dict(), "rule": "default",
            "balanced": True}
    runs: dict[str, dict] = {}
    for name in names:
        started = time.perf_counter()
        evidence = detection_evidence(args.zoo / name, args.cache)
        spec = dict(base, model_dir=str(args.zoo / name))
        model_runs = {"detection": {"seconds": evidence.seconds, "score": evidence.score, "zs": evidence.zs,
                                    "families": [{k: f[k] for k in ("family", "target", "z")}
                                                 for f in evidence.families]},
                      "none": cached_run(dict(spec, tier=SHOT_POOL, method="none"), args.cache, args.threads)}
        for tier in tiers:
            for method in ("finetune", "prompt", "cbpt"):
                model_runs[f"{tier}/{method}"] = cached_run(
                    dict(spec, tier=tier, method=method, timed=method != "prompt"), args.cache, args.threads)
        if SHOT_POOL in tiers:  # the comparisons, 16-shot: one choice of the default run changed in each
            default = model_runs[f"{SHOT_POOL}/cbpt"]
            for comparison, (_, change) in COMPARISONS.items():
                rule = change.get("rule", "default")
                changed = dict(spec, tier=SHOT_POOL, method="cbpt", rule=rule,
                               cbpt=dict(cbpt.as_dict(), **{k: v for k, v in change.items() if k != "rule"}))
                if rule != "default" and set(chosen_families(evidence, rule)) == set(
                        chosen_families(evidence, "default")):
                    model_runs[f"ablation/{comparison}"] = dict(default, rule=rule, same_run=True)  # same triggers
                else:
                    model_runs[f"ablation/{comparison}"] = cached_run(changed, args.cache, args.threads)
        if 0 in tiers:  # zero-shot with plain (unbalanced) pseudo-labels
            model_runs["ablation/plain-pseudo-labels"] = cached_run(
                dict(spec, tier=0, method="cbpt", balanced=False), args.cache, args.threads)
        if args.cost_threads and SHOT_POOL in tiers:  # the cost of both methods again, at another thread count
            for method in ("finetune", "cbpt"):
                model_runs[f"cost/{method}"] = cached_run(
                    dict(spec, tier=SHOT_POOL, method=method, threads=args.cost_threads, timed=True), args.cache,
                    args.cost_threads)
        runs[name] = model_runs
        print(f"{name}: done ({time.perf_counter() - started:.0f} s this invocation)", file=sys.stderr, flush=True)
    return runs


# --- summary and report --------------------------------------------------------------------------

def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _metrics(run: dict) -> dict:
    return {"ca": run["ca"], "asr": run["asr"], "natural": run["natural"]}


def summarise_tier(runs: dict, truths: dict, tier: int) -> dict:
    """Per-model rows, per-attack means, the bars and the costs of one tier."""
    rows = []
    for name, model_runs in runs.items():
        truth = truths[name]
        row = {"name": name, "attack": truth["attack"], "target": truth["target"],
               "zoo_bars_met": truth["zoo_bars_met"], "triggers": model_runs[f"{tier}/cbpt"]["triggers"],
               "attractors": model_runs[f"{tier}/cbpt"].get("attractors"),
               "label_accuracy": model_runs[f"{tier}/cbpt"]["label_accuracy"], "none": _metrics(model_runs["none"])}
        for method in ("finetune", "prompt", "cbpt"):
            run = model_runs[f"{tier}/{method}"]
            row[method] = _metrics(run) | {k: run[k] for k in ("seconds", "cpu_seconds", "peak_bytes")}
        rows.append(row)
    groups = {attack: [r for r in rows if r["attack"] == attack] for attack in sorted({r["attack"] for r in rows})}
    groups["overall"] = rows
    per_attack = {attack: {"models": len(members),
                           **{method: {key: _mean([r[method][key] for r in members])
                                       for key in ("ca", "asr", "natural")} for method in METHODS}}
                  for attack, members in groups.items()}
    overall = per_attack["overall"]
    cost = {method: {"seconds": _mean([r[method]["seconds"] for r in rows]),
                     "cpu_seconds": _mean([r[method]["cpu_seconds"] for r in rows]),
                     "peak_mb": _mean([r[method]["peak_bytes"] / 2**20 for r in rows])}
            for method in ("finetune", "prompt", "cbpt")}
    detection_seconds = _mean([runs[r["name"]]["detection"]["seconds"] for r in rows])
    time_ratio = cost["finetune"]["seconds"] / cost["cbpt"]["seconds"]
    memory_ratio = cost["finetune"]["peak_mb"] / max(cost["cbpt"]["peak_mb"], 1e-9)
    # The CPU is shared with other people's jobs, so one run can be slowed several-fold by a neighbour; the
    # median of the per-model ratios (both methods of a model ran minutes apart in one invocation, see
    # TIMED_SOURCES) is what the bar is judged on.
    time_ratios = [r["finetune"]["seconds"] / r["cbpt"]["seconds"] for r in rows]
    memory_ratios = [r["finetune"]["peak_bytes"] / max(r["cbpt"]["peak_bytes"], 1) for r in rows]
    cpu_ratios = [r["finetune"]["cpu_seconds"] / r["cbpt"]["cpu_seconds"] for r in rows]
    bars = {
        "asr": overall["cbpt"]["asr"] <= ASR_BAR,
        "ca": overall["none"]["ca"] - overall["cbpt"]["ca"] <= CA_DROP_BAR,
        "asr_below_baselines": overall["cbpt"]["asr"] < min(overall["finetune"]["asr"], overall["prompt"]["asr"]),
        "ca_not_below_baselines": overall["cbpt"]["ca"] >= max(overall["finetune"]["ca"], overall["prompt"]["ca"]),
        "time_ratio": statistics.median(time_ratios) >= TIME_RATIO_BAR,
        "less_memory": cost["cbpt"]["peak_mb"] < cost["finetune"]["peak_mb"],
    }
    return {"tier": tier, "rows": rows, "per_attack": per_attack, "bars": bars,
            "cbpt_asr_median": statistics.median(r["cbpt"]["asr"] for r in rows),
            "cost": cost | {"time_ratio": time_ratio, "memory_ratio": memory_ratio,
                            "time_ratio_median": statistics.median(time_ratios),
                            "cpu_ratio_median": statistics.median(cpu_ratios),
                            "memory_ratio_median": statistics.median(memory_ratios),
                            "detection_seconds": detection_seconds,
                            "time_ratio_with_detection": cost["finetune"]["seconds"] / (
                                cost["cbpt"]["seconds"] + detection_seconds),
                            "models_time_ratio_below_bar": sum(ratio < TIME_RATIO_BAR for ratio in time_ratios),
                            "models_more_memory": sum(
                                r["cbpt"]["peak_bytes"] >= r["finetune"]["peak_bytes"] for r in rows)},
            "models_cbpt_asr_over_bar": sum(r["cbpt"]["asr"] > ASR_BAR for r in rows),
            "models_cbpt_ca_drop_over_bar": sum(r["none"]["ca"] - r["cbpt"]["ca"] > CA_DROP_BAR for r in rows)}


def summarise_cost_threads(runs: dict) -> dict | None:
    """Fine-tuning and CBPT timed again at ``--cost-threads`` (16-shot): means and median per-model ratios."""
    names = [n for n, r in runs.items() if "cost/finetune" in r and "cost/cbpt" in r]
    if not names:
        return None
    pick = lambda method, key: [runs[n][f"cost/{method}"][key] for n in names]  # noqa: E731
    ratio = lambda key: statistics.median(f / c for f, c in zip(pick("finetune", key), pick("cbpt", key)))  # noqa: E731
    return {"models": len(names), "threads": runs[names[0]]["cost/cbpt"].get("threads"),
            **{method: {key: _mean(pick(method, key)) for key in ("seconds", "cpu_seconds", "peak_bytes")}
               for method in ("finetune", "cbpt")},
            "time_ratio_median": ratio("seconds"), "cpu_ratio_median": ratio("cpu_seconds"),
            "memory_ratio_median": ratio("peak_bytes")}


def summarise_ablations(runs: dict, truths: dict) -> dict:
    """Per attack and overall, mean CA and ASR of each comparison beside the default CBPT run it varies."""
    pairs = {**dict.fromkeys(COMPARISONS, f"{SHOT_POOL}/cbpt"), "plain-pseudo-labels": "0/cbpt"}
    out = {}
    for ablation, default in pairs.items():
        key = f"ablation/{ablation}"
        names = [n for n, r in runs.items() if key in r and default in r]
        if not names:
            continue
        attacks = sorted({truths[n]["attack"] for n in names}) + ["overall"]
        variants = (("default", default), (ablation, key))
        table = {}
        for attack in attacks:
            members = [n for n in names if attack == "overall" or truths[n]["attack"] == attack]
            table[attack] = {variant: {m: _mean([runs[n][k][m] for n in members]) for m in ("ca", "asr")}
                             for variant, k in variants}
        changed = [n for n in names if sorted(runs[n][key]["triggers"]) != sorted(runs[n][default]["triggers"])]
        seconds = {variant: _mean([runs[n][k]["seconds"] for n in names]) for variant, k in variants}
        out[ablation] = {"default_run": default, "models": len(names), "per_attack": table, "seconds": seconds,
                         "models_with_other_triggers": changed,
                         "label_accuracy": {n: {"default": runs[n][default]["label_accuracy"],
                                                ablation: runs[n][key]["label_accuracy"]} for n in names}
                         if ablation == "plain-pseudo-labels" else None}
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _yes(flag: bool) -> str:
    return "met" if flag else "**MISSED**"


TIER_TITLES = {16: "16-shot tier (16 labelled images per class, 352 in all)",
               4: "4-shot tier (4 labelled images per class, 88 in all)",
               0: "zero-shot tier (no labels: the 352 16-shot images, pseudo-labelled)"}


def render_tier(summary: dict) -> list[str]:
    """One tier's section: per-attack means, bars, costs and per-model rows."""
    tier, overall = summary["tier"], summary["per_attack"]["overall"]
    lines = [f"## {TIER_TITLES.get(tier, f'{tier}-shot tier')}", "",
             "CA and ASR in %, means over the models. ASR is the real trigger's (never used in training).", "",
             "| attack | models | none CA | none ASR | fine-tune CA | fine-tune ASR | prompt CA | prompt ASR | "
             "CBPT CA | CBPT ASR | CBPT CA change | natural rate after CBPT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for attack, row in summary["per_attack"].items():
        name = "**overall**" if attack == "overall" else attack
        change = 100 * (row["cbpt"]["ca"] - row["none"]["ca"])
        lines.append(f"| {name} | {row['models']} | " + " | ".join(
            f"{_pct(row[m]['ca'])} | {_pct(row[m]['asr'])}" for m in METHODS) +
            f" | {change:+.1f} | {_pct(row['cbpt']['natural'])} |")
    bars, cost = summary["bars"], summary["cost"]
    lines += ["", f"- CBPT mean ASR <= {_pct(ASR_BAR)}%: {_yes(bars['asr'])} ({_pct(overall['cbpt']['asr'])}%, "
              f"median {_pct(summary['cbpt_asr_median'])}%; {summary['models_cbpt_asr_over_bar']} of "
              f"{len(summary['rows'])} models above {_pct(ASR_BAR)}%; the natural rate after CBPT, the floor, "
              f"averages {_pct(overall['cbpt']['natural'])}%).",
              f"- CBPT mean CA at most {_pct(CA_DROP_BAR)} points below the backdoored model's: {_yes(bars['ca'])} "
              f"({100 * (overall['cbpt']['ca'] - overall['none']['ca']):+.1f} points; "
              f"{summary['models_cbpt_ca_drop_over_bar']} models lose more than {_pct(CA_DROP_BAR)} points).",
              f"- CBPT ASR below both baselines': {_yes(bars['asr_below_baselines'])}; CBPT CA at least both "
              f"baselines': {_yes(bars['ca_not_below_baselines'])} (fine-tune {_pct(overall['finetune']['ca'])}, "
              f"prompt {_pct(overall['prompt']['ca'])}, CBPT {_pct(overall['cbpt']['ca'])}).",
              f"- Cost, means per model: full fine-tuning {cost['finetune']['seconds']:.2f} s and "
              f"{cost['finetune']['peak_mb']:.1f} MB peak; plain prompt tuning {cost['prompt']['seconds']:.2f} s "
              f"and {cost['prompt']['peak_mb']:.1f} MB; CBPT {cost['cbpt']['seconds']:.2f} s and "
              f"{cost['cbpt']['peak_mb']:.1f} MB. Fine-tuning / CBPT: {cost['time_ratio']:.1f}x the time "
              f"(ratio of the means; median of the per-model ratios {cost['time_ratio_median']:.1f}x, judged "
              f"against the bar of {TIME_RATIO_BAR:.0f}x as a neighbour's job can slow a single run: "
              f"{_yes(bars['time_ratio'])}; {cost['models_time_ratio_below_bar']} models below it; CPU time, "
              f"which a neighbour disturbs less: fine-tuning {cost['finetune']['cpu_seconds']:.2f} s, CBPT "
              f"{cost['cbpt']['cpu_seconds']:.2f} s, median per-model ratio {cost['cpu_ratio_median']:.1f}x), "
              f"{cost['memory_ratio']:.1f}x the peak memory (median per model {cost['memory_ratio_median']:.1f}x; "
              f"CBPT less: {_yes(bars['less_memory'])}; {cost['models_more_memory']} models not). Counting the "
              f"detection run CBPT needs for its triggers ({cost['detection_seconds']:.1f} s per model), "
              f"fine-tuning takes "
              f"{cost['time_ratio_with_detection']:.2f}x the time of detection + CBPT.", "",
              "<details><summary>Per model</summary>", "",
              "| model | zoo bars | dummy triggers (attractors) | none CA / ASR | fine-tune CA / ASR | "
              "prompt CA / ASR | CBPT CA / ASR | CBPT s | fine-tune s | CBPT MB | fine-tune MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        triggers = ", ".join(f"{family} ({', '.join(drawn)})"
                             for family, drawn in zip(row["triggers"], row["attractors"] or []))
        label = "" if row["label_accuracy"] is None else f"; pseudo-labels {_pct(row['label_accuracy'])}% right"
        lines.append(f"| {row['name']} | {'met' if row['zoo_bars_met'] else 'MISSED'} | {triggers}{label} | " +
                     " | ".join(f"{_pct(row[m]['ca'])} / {_pct(row[m]['asr'])}" for m in METHODS) +
                     f" | {row['cbpt']['seconds']:.2f} | {row['finetune']['seconds']:.2f} | "
                     f"{row['cbpt']['peak_bytes'] / 2**20:.1f} | {row['finetune']['peak_bytes'] / 2**20:.1f} |")
    return lines + ["", "</details>", ""]


def render_summary(tiers: list[dict]) -> list[str]:
    """The bars of every tier in one table (details in each tier's section)."""
    lines = ["## Summary", "", "| tier | CBPT mean ASR % (median) | models over 2% | CBPT CA change, points | "
             "models losing > 2 points | ASR below both baselines | CA at least both baselines | "
             "fine-tune / CBPT time (median) | same, CPU time | fine-tune / CBPT peak memory (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for summary in tiers:
        overall, cost, bars = summary["per_attack"]["overall"], summary["cost"], summary["bars"]
        lines.append(
            f"| {summary['tier']}-shot | {_pct(overall['cbpt']['asr'])} ({_pct(summary['cbpt_asr_median'])}) "
            f"{'' if bars['asr'] else '**MISSED**'} | {summary['models_cbpt_asr_over_bar']} of {len(summary['rows'])} "
            f"| {100 * (overall['cbpt']['ca'] - overall['none']['ca']):+.1f} {'' if bars['ca'] else '**MISSED**'} "
            f"| {summary['models_cbpt_ca_drop_over_bar']} | {_yes(bars['asr_below_baselines'])} | "
            f"{_yes(bars['ca_not_below_baselines'])} | {cost['time_ratio_median']:.1f}x "
            f"{'' if bars['time_ratio'] else '**MISSED**'} | {cost['cpu_ratio_median']:.1f}x | "
            f"{cost['memory_ratio_median']:.1f}x |")
    return lines + ["", "Bars: mean ASR <= 2%, mean CA at most 2 points below the backdoored models', ASR below "
                    "both baselines at equal or better CA, at least 10x less time and less peak memory than full "
                    "fine-tuning. The 0-shot tier has no labels.", ""]


def render_ablations(ablations: dict) -> list[str]:
    """The comparisons: each changes one choice of the default CBPT run; and balanced pseudo-labels."""
    titles = {name: f"{title} (16-shot)" for name, (title, _) in COMPARISONS.items()} | {
        "plain-pseudo-labels": "Zero-shot labels: class-balanced (default) vs plain top-1 pseudo-labels"}
    lines = []
    for ablation, result in ablations.items():
        lines += [f"### {titles[ablation]}", "", f"| attack | default CA | default ASR | {ablation} CA | "
                  f"{ablation} ASR |", "|---|---|---|---|---|"]
        for attack, row in result["per_attack"].items():
            lines.append(f"| {'**overall**' if attack == 'overall' else attack} | {_pct(row['default']['ca'])} | "
                         f"{_pct(row['default']['asr'])} | {_pct(row[ablation]['ca'])} | "
                         f"{_pct(row[ablation]['asr'])} |")
        lines += ["", f"CBPT time, mean per model: default {result['seconds']['default']:.2f} s, {ablation} "
                  f"{result['seconds'][ablation]:.2f} s."]
        if ablation == "evidence-rule":
            changed = result["models_with_other_triggers"]
            lines += ["", f"The rule left out at least one family on {len(changed)} of {result['models']} models"
                      + ("." if len(changed) == result["models"] else
                         f" ({', '.join(changed)}); on the others both columns come from one run.")]
        if ablation == "plain-pseudo-labels":
            accuracy = result["label_accuracy"]
            lines += ["", "Pseudo-label accuracy, mean over models: class-balanced "
                      f"{_pct(_mean([v['default'] for v in accuracy.values()]))}%, plain top-1 "
                      f"{_pct(_mean([v[ablation] for v in accuracy.values()]))}%."]
        lines.append("")
    return lines


def render(results: dict) -> str:
    """PURIFICATION.md from the results alone."""
    cbpt, finetune = results["settings"]["cbpt"], results["settings"]["finetune"]
    lines = ["# Purification benchmark", "",
             f"Written by `{results['command']}`; do not edit by hand.", "",
             f"Zoo: `{results['zoo']}`, {len(results['models'])} backdoored models. Wall time of the run that "
             f"wrote this file: {results['wall_seconds']:.0f} s; all the cached work it reports (detection, every "
             f"method's process, the fine-tuning learning-rate sweep) took {results['work_seconds']:.0f} s of wall "
             f"time, with `--threads {results['threads']}` on this machine's 2-core CPU shared with other jobs. "
             "Invocations on this cache: " + "; ".join(
                 f"{i['finished']}, {i['seconds']:.0f} s, {i['runs_executed']} runs executed"
                 for i in results["invocations"]) + ".", "",
             "## What was measured", "",
             "- **Test data**: the zoo's test split (procedural shapes and scikit-learn digits, 22 classes, "
             f"{results['test_images']} images). CA is top-1 accuracy on it; ASR is the share of stamped "
             "non-target test images classified as the target, with the *real* trigger from `zoo_truth.json`; "
             "the natural rate is the same share without any trigger (the floor of ASR). The real trigger is "
             "used only to measure, never to train.",
             "- **Training data**: the zoo's few-shot split (disjoint from training and test images). Zero-shot "
             "tier: the 16-shot images with their labels dropped, labelled by the backdoored model's own "
             "predictions, made class-balanced (Sinkhorn-Knopp on the softmax, then top-1); the plain top-1 "
             "pseudo-labels are compared below. Every method sees the same images and labels.",
             "- **none**: the backdoored model with its hand-written prompts, as shipped.",
             f"- **fine-tune** (`benchmarks/full_finetune.py`): every weight, AdamW (lr {finetune['lr']}, weight "
             f"decay {finetune['weight_decay']}, {finetune['warmup']} warm-up steps then cosine), "
             f"{finetune['steps']} steps of {finetune['batch_size']} images, cross-entropy of the zero-shot "
             "logits with the text tower run on the hand-written prompts (both towers train). The learning rate "
             "was picked by this script on development models as fine-tuning's lowest ASR with CA within the "
             f"CA bar: {_finetune_choice(results['finetune_choice'])}.",
             "- **prompt**: the CBPT trainer with no trigger (`triggers=[]`), same settings as CBPT.",
             f"- **CBPT**: `tune_prompts` with n_ctx {cbpt['n_ctx']}, {cbpt['steps']} steps, lr {cbpt['lr']}, "
             f"l_bd {cbpt['l_bd']}, l_drift {cbpt['l_drift']}, l_distill {cbpt['l_distill']}, "
             f"margin {cbpt['margin']}, backdoor term \"{cbpt['backdoor']}\" (scope \"{cbpt['leave']}\"), "
             f"dummy stamps at strength {cbpt['strength']}, {cbpt['optimiser']}, the whole set in every step "
             f"(batch_size {cbpt['batch_size']}); dummy triggers from `gather_evidence` "
             "(default budget, seed 0, zero-data procedural probes), chosen by "
             "`select_dummy_triggers` (every inverted family).",
             "- **Cost**: each run is a fresh Python process; the timed window (wall and process CPU time) is "
             "the method's own work (CBPT: "
             "image features of the clean and stamped views, then the text-side training; fine-tuning: its "
             "training loop), not loading the model and data nor evaluating. Peak memory is the growth of the "
             "process's peak resident set over its resident size at the start of the window: after "
             "`gc.collect()` and `malloc_trim(0)` the kernel's peak mark (VmHWM) is restarted (`5` into "
             "`/proc/self/clear_refs`) and read again after the window. Torch keeps CPU tensors in plain "
             "malloc'd memory, which `tracemalloc` does not see and RSS does. Before the window each method runs "
             "two steps on four images (on a copy of the model), so code pages and lazy state that any run "
             "touches once per process are in neither its time nor its memory; a fresh process per run keeps "
             "one method's allocations from serving another's. The fine-tuning and CBPT runs whose times are "
             "compared are cached on the code of both methods together, so they were always timed in the same "
             "invocation (an interrupted one excepted), minutes apart, model by model.", ""]
    lines = lines[:6] + render_summary(results["tiers"]) + lines[6:]  # the summary right after the header
    for summary in results["tiers"]:
        lines += render_tier(summary)
    other = results.get("cost_threads")
    if other:
        lines += [f"## Cost at {other['threads']} thread(s)", "",
                  f"Fine-tuning and CBPT timed again on the 16-shot tier with `--cost-threads {other['threads']}` "
                  f"({other['models']} models; same measurement): fine-tuning {other['finetune']['seconds']:.2f} s "
                  f"({other['finetune']['cpu_seconds']:.2f} s CPU, {other['finetune']['peak_bytes'] / 2**20:.1f} MB), "
                  f"CBPT {other['cbpt']['seconds']:.2f} s ({other['cbpt']['cpu_seconds']:.2f} s CPU, "
                  f"{other['cbpt']['peak_bytes'] / 2**20:.1f} MB); median per-model ratios "
                  f"{other['time_ratio_median']:.1f}x wall, {other['cpu_ratio_median']:.1f}x CPU, "
                  f"{other['memory_ratio_median']:.1f}x peak memory. " + (
                      "A second timing of both methods at the main runs' thread count, cached under keys of its "
                      "own (and, like the main runs, re-timed together)." if other["threads"] == results["threads"]
                      else "CBPT's steps are many small text-side operations, fine-tuning's are larger ones, so the "
                      "thread count moves them differently."), ""]
    lines += ["## Comparisons", ""] + render_ablations(results["ablations"])
    lines += ["## Defaults chosen", "",
              "For the ready policies' `purification:` sections (and `tune_prompts`' defaults):", "", "```yaml",
              "purification:", f"  n_ctx: {cbpt['n_ctx']}", f"  steps: {cbpt['steps']}", f"  lr: {cbpt['lr']}",
              "  loss_weights:", f"    l_bd: {cbpt['l_bd']}", f"    l_drift: {cbpt['l_drift']}",
              f"    l_distill: {cbpt['l_distill']}", f"  margin: {cbpt['margin']}", "```", "",
              f"Not policy keys, fixed in `tune_prompts`: optimiser {cbpt['optimiser']}, the whole set in every "
              f"step, backdoor term \"{cbpt['backdoor']}\" with leave scope \"{cbpt['leave']}\", dummy stamps at "
              f"strength {cbpt['strength']}.", "",
              "## Limits", "",
              "- The encoders still carry the backdoor: the protection holds for the tuned class prompts only "
              "(not for retrieval, new class names or other prompts).",
              "- Purification is as good as the dummy trigger: where detection's inverted triggers send images to "
              "a universal attractor of the small model rather than to the attacker's target, CBPT has little to "
              "train against (see the per-model rows with ASR above the bar).",
              _zoo_bars_limit(results["tiers"][0]["rows"]), ""]
    return "\n".join(lines)


def _zoo_bars_limit(rows: list[dict]) -> str:
    """The Limits bullet on zoo models that miss the zoo's own bars, from the rows themselves."""
    missed = [row["name"] for row in rows if not row["zoo_bars_met"]]
    if not missed:
        return "- Every model here meets the zoo's own bars (benchmarks/ZOO.md)."
    return (f"- {len(missed)} of {len(rows)} models miss the zoo's own bars (ASR < {ZOO_ASR_BAR:.0%} with the real "
            f"trigger, or CA more than {100 * ZOO_CA_GAP_BAR:.0f} points from the clean twin; benchmarks/ZOO.md): "
            f"{', '.join(missed)}. They are "
            "reported as they are and marked in the per-model rows: a backdoor the attack barely implanted "
            "starts with a low ASR, which flatters the means after purification.")


def _log_invocation(cache: Path, seconds: float, executed: int) -> list[dict]:
    """Append this invocation (wall seconds, runs it executed rather than read from the cache) to the cache's log."""
    path = cache / "invocations.json"
    log = json.loads(path.read_text()) if path.is_file() else []
    log.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1),
                "runs_executed": executed})
    path.write_text(json.dumps(log, indent=1) + "\n")
    return log


def _finetune_choice(choice: dict) -> str:
    """The learning-rate sweep in one sentence."""
    rates = "; ".join(f"lr {lr}: CA {_pct(m['ca'])}, ASR {_pct(m['asr'])}" for lr, m in choice["by_lr"].items())
    return (f"on {', '.join(choice['models'])} (backdoored CA {_pct(choice['none_ca'])}, 16-shot) {rates}; "
            f"chosen lr {choice['chosen']}")


def _zoo_truths(zoo: Path) -> dict:
    """Ground truth of every zoo model, with whether it met the zoo's own bars (benchmarks/ZOO.md)."""
    from cbpt_guard_zoo.build import read_truths
    from cbpt_guard_zoo.report import summarise

    truths = {t["name"]: t for t in read_truths(zoo.parent, zoo.name)}
    met = {row["name"]: row.get("meets_bars") for row in summarise(list(truths.values()), len(CLASSES))["models"]}
    return {name: dict(truth, zoo_bars_met=met[name]) for name, truth in truths.items()}


def _work_seconds(runs: dict) -> float:
    """Wall time of all cached work: each model's detection and every measured process."""
    total = 0.0
    for model_runs in runs.values():
        total += model_runs["detection"]["seconds"]
        total += sum(run.get("process_seconds", 0.0) for key, run in model_runs.items()
                     if key != "detection" and not run.get("same_run"))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, help="a config folder of a built zoo, e.g. zoo/vit")
    parser.add_argument("--out", default=Path("benchmarks"), type=Path)
    parser.add_argument("--tiers", default="16,4,0", help="shots per class; 0 is the zero-shot tier")
    parser.add_argument("--models", default="all", help="'all' or comma-separated backdoored model names")
    parser.add_argument("--threads", default=2, type=int)
    parser.add_argument("--cache", default=Path("/work/cache/purify"), type=Path,
                        help="detection triggers and per-run results (outside the repository)")
    parser.add_argument("--finetune-dev", default="badnets-s0,sig-s1",
                        help="models the fine-tuning baseline's learning rate is picked on")
    parser.add_argument("--cost-threads", type=int, default=0,
                        help="also time fine-tuning and CBPT (16-shot) at this thread count")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one run, as JSON, in this fresh process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_method(json.loads(args.worker))))
        return 0
    if args.zoo is None:
        parser.error("--zoo is required")
    started = time.perf_counter()
    cbpt = CbptSettings()
    finetune, finetune_choice = choose_finetune(args, cbpt)
    cached_before = len(list(args.cache.glob("*/*-*-*.json")))
    runs = run_all(args, cbpt, finetune)
    invocations = _log_invocation(args.cache, time.perf_counter() - started,
                                  len(list(args.cache.glob("*/*-*-*.json"))) - cached_before)
    truths = _zoo_truths(args.zoo)
    tiers = [int(t) for t in args.tiers.split(",")]
    recipe = next(iter(truths.values()))["recipe"]
    command = "python benchmarks/purification.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "zoo": str(args.zoo), "models": list(runs), "threads": args.threads,
               "test_images": len(test_set(recipe)[1]),
               "settings": {"cbpt": cbpt.as_dict(), "finetune": finetune.as_dict(),
                            "trigger_rule": "select_dummy_triggers (every inverted family)"},
               "finetune_choice": finetune_choice,
               "tiers": [summarise_tier(runs, truths, tier) for tier in tiers],
               "ablations": summarise_ablations(runs, truths), "cost_threads": summarise_cost_threads(runs),
               "runs": runs,
               "wall_seconds": time.perf_counter() - started, "invocations": invocations,
               "work_seconds": _work_seconds(runs) + finetune_choice["seconds"]}
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "purification.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (args.out / "PURIFICATION.md").write_text(render(results))
    print(f"wrote {args.out}/PURIFICATION.md and {args.out}/results/purification.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
