"""Sweep benchmark: 60 checkpoints through `cbpt-guard sweep` on a local Ray against one `cbpt-guard check` at a time.

Usage:

    python benchmarks/sweep.py --out benchmarks

The hub it builds (under --work, default build/sweep-bench) holds 60 checkpoints:
copies of the two bundled zoo models (examples/clean and examples/backdoored),
each copy made distinct by its manifest's description (so each is its own
digest and is really checked), a few byte-identical duplicates of those copies
(what a mirror holds; the sweep checks each digest once), model folders whose
weights are a malicious pickle, and model folders whose safetensors file is
truncated. Detection runs at a small named budget, `sweep-bench` (written here
as a policy: the patch family only, 30 inversion steps, batch 16, one targeted
class; no purification, no export), with a calibration fitted on
examples/clean at that same budget, so both runs make the same decisions.

In one run it measures, on this machine:

1. sequential: `cbpt-guard check MODEL --policy sweep-bench --out DIR` for each
   checkpoint, one process after another (the way a registry hook gates one
   model at a time);
2. sweep: `cbpt-guard sweep HUB --policy sweep-bench --out DIR --cpus N`;
3. resume: the same sweep killed with SIGKILL once half its checks finished,
   then started again into the same folder; and the same sweep run again over
   its finished folder (nothing left to check).

Wall times, the peak resident memory of the whole process tree (sampled from
/proc every 0.2 s: the CLI, and for the sweep Ray's own processes and
workers), and whether each model's decision agrees between the two runs go to
OUT/SWEEP.md and OUT/results/sweep.json; nothing there is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from cbpt_guard.cli.main import main; main()"]
POLICY = """\
version: 1
description: sweep-bench, the sweep benchmark's small budget (benchmarks/sweep.py)
mode: enforce
detection:
  budget: {steps: 30, batch_size: 16, time_limit_s: 1800, targeted_classes: 1}
  families: [patch]
  calibration: sweep-bench-calibration.json
evidence: {on_backdoor: block, on_required_skipped: inconclusive, on_stage_failure: block}
export: {enabled: false}
"""


class _Payload:
    """A pickle that would run a shell command if it were ever loaded (it never is: intake refuses it)."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def build_hub(hub: Path, *, zoo: int, duplicates: int, malicious: int, broken: int) -> dict[str, str]:
    """Write the hub; return each checkpoint's name -> its kind (clean, backdoored, duplicate, malicious, broken)."""
    if hub.exists():
        shutil.rmtree(hub)
    kinds: dict[str, str] = {}
    sources = {"clean": ROOT / "examples" / "clean", "backdoored": ROOT / "examples" / "backdoored"}
    copies = []
    for index in range(zoo):
        kind = "clean" if index % 2 == 0 else "backdoored"
        target = hub / "zoo" / f"{kind}-{index:02d}"
        shutil.copytree(sources[kind], target)
        manifest = json.loads((target / "cbpt_manifest.json").read_text())
        manifest["description"] = f"copy {index} of examples/{kind}"  # distinct bytes, the same model
        (target / "cbpt_manifest.json").write_text(json.dumps(manifest))
        kinds[target.relative_to(hub).as_posix()] = kind
        copies.append(target)
    for index in range(duplicates):
        original = copies[index % len(copies)]
        target = hub / "mirror" / f"{original.name}-dup{index}"
        shutil.copytree(original, target)
        kinds[target.relative_to(hub).as_posix()] = "duplicate"
    config = (sources["clean"] / "open_clip_config.json").read_text()
    manifest = (sources["clean"] / "cbpt_manifest.json").read_text()
    weights = (sources["clean"] / "open_clip_model.safetensors").read_bytes()
    for index in range(malicious):
        target = hub / "uploads" / f"malicious-{index:02d}"
        target.mkdir(parents=True)
        (target / "open_clip_config.json").write_text(config)
        (target / "cbpt_manifest.json").write_text(manifest)
        payload = {"state_dict": {"note": f"sample {index}"}, "hook": _Payload(hub.parent / "pwned")}
        (target / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps(payload, protocol=2))
        kinds[target.relative_to(hub).as_posix()] = "malicious"
    for index in range(broken):
        target = hub / "uploads" / f"broken-{index:02d}"
        target.mkdir(parents=True)
        (target / "open_clip_config.json").write_text(config)
        (target / "cbpt_manifest.json").write_text(manifest)
        cut = 4096 + 997 * index  # truncated mid-tensor, a different length each
        (target / "open_clip_model.safetensors").write_bytes(weights[:cut])
        kinds[target.relative_to(hub).as_posix()] = "broken"
    return kinds


def fit_calibration(policy: Path) -> float:
    """Fit the calibration the policy names on examples/clean at the policy's own budget; return seconds taken."""
    import torch

    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.pipeline import detect_budget
    from cbpt_guard.policy import load_policy

    torch.set_num_threads(1)
    started = time.perf_counter()
    calibration = calibrate_models([ROOT / "examples" / "clean"], budget=detect_budget(load_policy(policy)))
    (policy.parent / "sweep-bench-calibration.json").write_text(calibration.to_json())
    return time.perf_counter() - started


# -- measuring ----------------------------------------------------------------------------------------


def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and every process below it, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as handle:
                rss[int(entry)] = int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """The peak resident memory of a process tree, sampled every 0.2 s while it runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(self.pid))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(command: list[str], env: dict) -> tuple[int, float, int]:
    """Run ``command``; its exit code, wall seconds and peak tree memory in bytes."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    memory = PeakMemory(process.pid)
    code = process.wait()
    return code, time.perf_counter() - started, memory.stop()


def sequential(hub: Path, kinds: dict[str, str], policy: Path, out: Path, env: dict) -> dict:
    """One `cbpt-guard check` per checkpoint, one after another."""
    decisions, peak, started = {}, 0, time.perf_counter()
    for index, name in enumerate(sorted(kinds)):
        report = out / f"{index:02d}"
        code, _, memory = run([*CLI, "check", str(hub / name), "--policy", str(policy), "--out", str(report)], env)
        peak = max(peak, memory)
        verdict = report / "verdict.json"
        action = json.loads(verdict.read_text())["decision"]["action"] if verdict.is_file() else f"exit {code}"
        decisions[name] = {"action": action, "exit_code": code}
    return {"wall_s": time.perf_counter() - started, "peak_bytes": peak, "decisions": decisions}


def sweep(hub: Path, policy: Path, out: Path, env: dict, cpus: int) -> dict:
    """The whole hub through one `cbpt-guard sweep` on a local Ray with ``cpus`` CPUs."""
    code, wall, peak = run([*CLI, "sweep", str(hub), "--policy", str(policy), "--out", str(out),
                            "--cpus", str(cpus)], env)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "peak_bytes": peak, "exit_code": code, "rows": rows,
            "decisions": {row["name"]: {"action": row["action"], "exit_code": row["exit_code"]} for row in rows}}


def killed_and_resumed(hub: Path, policy: Path, out: Path, env: dict, cpus: int, checks: int) -> dict:
    """The sweep killed with SIGKILL once half its model checks are stored, then run again into the same folder."""
    started = time.perf_counter()
    process = subprocess.Popen([*CLI, "sweep", str(hub), "--policy", str(policy), "--out", str(out),
                                "--cpus", str(cpus)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    stored = 0
    while process.poll() is None:
        entries = [json.loads((d / "entry.json").read_text()) for d in (out / "store").glob("*")
                   if (d / "entry.json").is_file()] if (out / "store").is_dir() else []
        stored = sum(1 for e in entries if e["stage"] == "detection")
        if stored >= max(1, checks // 2):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    process.wait()
    killed_at = time.perf_counter() - started
    time.sleep(2)  # let Ray's orphaned processes notice their driver is gone
    resumed = sweep(hub, policy, out, env, cpus)
    again = sweep(hub, policy, out, env, cpus)
    rescanned = sum(1 for row in resumed["rows"] if row["status"] == "scanned")
    return {"killed_after_s": killed_at, "checks_stored_at_kill": stored, "resume_wall_s": resumed["wall_s"],
            "resume_rescanned": rescanned, "resume_decisions": resumed["decisions"],
            "finished_rerun_wall_s": again["wall_s"],
            "finished_rerun_rescanned": sum(1 for row in again["rows"] if row["status"] == "scanned")}


# -- report -------------------------------------------------------------------------------------------


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def write_report(results: dict, out: Path) -> None:
    seq, swp, res = results["sequential"], results["sweep"], results["resume"]
    counts: dict[str, int] = {}
    for kind in results["kinds"].values():
        counts[kind] = counts.get(kind, 0) + 1
    agree = sum(1 for name, d in seq["decisions"].items()
                if swp["decisions"].get(name, {}).get("action") == d["action"])
    by_kind: dict[tuple[str, str], int] = {}
    for name, kind in results["kinds"].items():
        key = (kind, swp["decisions"][name]["action"])
        by_kind[key] = by_kind.get(key, 0) + 1
    ratio = seq["wall_s"] / swp["wall_s"]
    overhead = res["killed_after_s"] + res["resume_wall_s"] - swp["wall_s"]
    lines = [
        "# Sweep benchmark: `cbpt-guard sweep` on a local Ray against one `cbpt-guard check` at a time",
        "",
        f"Written by `python benchmarks/sweep.py {results['argv']}` on {results['machine']}; load average "
        f"{results['load_before']} before, {results['load_after']} after (1, 5, 15 minutes); do not edit by hand.",
        "",
        f"Hub: {len(results['kinds'])} checkpoints ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}; "
        f"clean and backdoored are copies of examples/clean and examples/backdoored, each with its own manifest "
        f"description; duplicates are byte-identical copies of some of them), {results['unique']} distinct digests.",
        "",
        f"Budget `sweep-bench` (the policy this script writes): {results['budget']}; calibration fitted on "
        f"examples/clean at that budget ({results['calibration_s']:.0f} s, not counted below). A small budget keeps "
        "the run short; it measures the sweep's cost, not detection's power (benchmarks/DETECTION.md does that).",
        "",
        "| run | wall | peak memory (process tree) | exit code |",
        "|---|---|---|---|",
        f"| sequential: `cbpt-guard check` per checkpoint, one at a time | {seq['wall_s']:.1f} s | "
        f"{_mib(seq['peak_bytes'])} (one check) | worst {results['sequential_worst']} |",
        f"| `cbpt-guard sweep --cpus {results['cpus']}` (local Ray) | {swp['wall_s']:.1f} s | "
        f"{_mib(swp['peak_bytes'])} (driver, Ray, {results['cpus']} workers) | {swp['exit_code']} |",
        f"| the sweep killed with SIGKILL after {res['checks_stored_at_kill']} of {results['checks']} model checks, "
        f"then resumed | {res['killed_after_s']:.1f} s + {res['resume_wall_s']:.1f} s | | |",
        f"| the sweep again over its finished folder | {res['finished_rerun_wall_s']:.1f} s | | |",
        "",
        f"- Wall time ratio, sequential / sweep: **{ratio:.2f}x** (goal: at least 1, the sweep no slower).",
        f"- Resume overhead: killed run + resumed run - uninterrupted sweep = {overhead:+.1f} s (the resumed run "
        f"starts Ray and its workers again); the resumed sweep checked {res['resume_rescanned']} of "
        f"{results['checks']} distinct models that pass intake (those not stored when it was killed), and a "
        f"sweep over the finished folder checked {res['finished_rerun_rescanned']} "
        f"({res['finished_rerun_wall_s']:.1f} s: hashing the hub and reading the store, no Ray started).",
        f"- Decisions: the sweep and the sequential checks agree on {agree} of {len(seq['decisions'])} "
        "checkpoints; the resumed sweep's decisions equal the uninterrupted one's: "
        f"{'yes' if res['resume_decisions'] == swp['decisions'] else 'no'}.",
        "",
        "| checkpoint kind | decision in the sweep | checkpoints |",
        "|---|---|---|",
    ]
    lines += [f"| {kind} | {action} | {n} |" for (kind, action), n in sorted(by_kind.items())]
    if by_kind.get(("backdoored", "pass")):
        lines += ["", "At this small budget detection does not find the BadNets backdoor of examples/backdoored "
                      "(the ready policies' budget does: README.md); both runs say so alike."]
    lines += [
        "",
        "Where the time goes: each sequential check is a new process that imports torch and open_clip before it "
        "reads a byte, which costs as much as the intake of a refused file; the sweep imports them once per "
        "worker, runs intake in batches, checks each distinct digest once, and keeps both CPUs busy. "
        "The sweep's fixed cost is Ray's start and its workers' imports (part of its wall time above). "
        "The machine is shared with other work (load averages above); timings vary with it.",
        "",
    ]
    (out / "SWEEP.md").write_text("\n".join(lines))
    (out / "results").mkdir(exist_ok=True)
    (out / "results" / "sweep.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "sweep-bench")
    parser.add_argument("--zoo", type=int, default=2, help="distinct copies of the two examples, alternately")
    parser.add_argument("--duplicates", type=int, default=2, help="byte-identical copies of those copies")
    parser.add_argument("--malicious", type=int, default=28)
    parser.add_argument("--broken", type=int, default=28)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    policy = work / "sweep-bench.yaml"
    policy.write_text(POLICY)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    kinds = build_hub(work / "hub", zoo=args.zoo, duplicates=args.duplicates, malicious=args.malicious,
                      broken=args.broken)
    calibration_s = fit_calibration(policy)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    from cbpt_guard.sweeper.sources import discover

    unique = len({c.digest for c in discover([str(work / "hub")], staging=work / "staging")})
    checks = args.zoo  # distinct models that pass intake and are checked
    print(f"hub: {len(kinds)} checkpoints, {unique} distinct; sequential ...", flush=True)
    seq = sequential(work / "hub", kinds, policy, work / "sequential", env)
    print(f"sequential {seq['wall_s']:.1f} s; sweep ...", flush=True)
    swp = sweep(work / "hub", policy, work / "sweep", env, args.cpus)
    print(f"sweep {swp['wall_s']:.1f} s; killed and resumed ...", flush=True)
    res = killed_and_resumed(work / "hub", policy, work / "resumed", env, args.cpus, checks)
    if (work / "pwned").exists():
        raise SystemExit("a malicious payload ran: the benchmark's results are void")
    from cbpt_guard.sweeper.records import worst_exit_code

    argv = " ".join(sys.argv[1:])
    results = {"argv": argv, "machine": f"{platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} "
               f"CPUs, Python {platform.python_version()}", "load_before": load_before,
               "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "kinds": kinds, "unique": unique,
               "checks": checks, "cpus": args.cpus, "calibration_s": calibration_s,
               "budget": "patch family only, 30 inversion steps, batch 16, 1 targeted class, default anomaly "
                         "screen and probes; no purification, no export",
               "sequential": seq, "sweep": {k: v for k, v in swp.items() if k != "rows"}, "resume": res,
               "sequential_worst": worst_exit_code(d["exit_code"] for d in seq["decisions"].values())}
    write_report(results, args.out)
    print((args.out / "SWEEP.md").read_text())


if __name__ == "__main__":
    main()
