"""Fuzz intake's untrusted inputs at scale and record every outcome: benchmarks/FUZZ.md and results/fuzz.json.

    python benchmarks/fuzz.py [--cases 10000] [--seed 0]

Each target (model config through ``load_checkpoint``, manifest and class list,
safetensors header, policy YAML) runs ``--cases`` hypothesis cases in this one
process, with the strategies of ``tests/fuzz_targets.py``. Per case it records
the outcome (accepted, or the typed error's class and exit code; anything else
is a crash, and the bar is none), the CPU seconds (bar: 10) and the peak of
Python allocations traced by tracemalloc and the growth of the process's peak
resident size over its resident size before the case, which counts torch's
native allocations too (bar for both: 1 GiB); the process's own peak resident
size is recorded per target beside it. Nothing is typed into the tables: they
are written from the counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared fuzz targets
sys.path.insert(0, str(ROOT))

import fuzz_targets  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings  # noqa: E402

SECONDS_BAR = 10.0
MEMORY_BAR = 2**30


def fuzz_target(target: str, cases: int, seed: int, scratch: str) -> dict:
    """Run ``cases`` hypothesis cases of ``target``; return counts, bars and crash samples."""
    run = fuzz_targets.runner(target, scratch)
    kinds: collections.Counter = collections.Counter()
    exit_codes: collections.Counter = collections.Counter()
    crashes: list[dict] = []
    worst = {"seconds": 0.0, "traced_bytes": 0, "rss_growth_bytes": 0}
    count = 0

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fuzz_targets.STRATEGIES[target])
    def one_case(case):
        nonlocal count
        count += 1
        resident = _resident_bytes()
        tracemalloc.start()  # traces this case's allocations only, not hypothesis's generation
        started = time.process_time()
        try:
            outcome = fuzz_targets.outcome_of(run, case)
        except Exception as error:  # noqa: BLE001 - a crash is what this counts
            outcome = None
            kinds["crash"] += 1
            if len(crashes) < 20:
                crashes.append({"error": f"{type(error).__name__}: {str(error)[:300]}", "case": repr(case)[:600],
                                "where": traceback.format_exc(limit=-3)[-1200:]})
        finally:
            seconds = time.process_time() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if outcome is not None:
            kinds[outcome.kind] += 1
            exit_codes[outcome.exit_code] += 1
        worst["seconds"] = max(worst["seconds"], seconds)
        worst["traced_bytes"] = max(worst["traced_bytes"], peak)
        # The process's peak resident size after the case, less its resident size before: an upper bound on
        # what the case added at its peak, torch's native allocations included.
        worst["rss_growth_bytes"] = max(worst["rss_growth_bytes"], _peak_resident_bytes() - resident)

    warm = fuzz_targets.outcome_of(run, fuzz_targets.VALID_CASES[target])  # imports happen here, unmeasured
    assert warm.kind == "accepted", warm
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started, cpu_started = time.perf_counter(), time.process_time()
    one_case()
    return {
        "cases": count,
        "accepted": kinds.pop("accepted", 0),
        "crashes": kinds.pop("crash", 0),
        "typed_errors": dict(sorted(kinds.items())),
        "exit_codes": {str(code): n for code, n in sorted(exit_codes.items())},
        "max_case_cpu_seconds": round(worst["seconds"], 3),
        "max_case_traced_bytes": worst["traced_bytes"],
        "max_case_rss_growth_bytes": worst["rss_growth_bytes"],
        "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "process_max_rss_bytes_before": rss_before,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "crash_samples": crashes,
    }


def _resident_bytes() -> int:
    """The process's resident set size now (Linux /proc; 0 elsewhere, which only loosens the bound)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def render(results: dict) -> str:
    """FUZZ.md from the results (never edited by hand)."""
    lines = [
        "# Fuzzing intake's untrusted inputs",
        "",
        "Written by `benchmarks/fuzz.py` (do not edit). Every case must end accepted or in a typed error",
        "with a documented exit code (a crash is any other exception, or exit 2); bars: no case above",
        f"{SECONDS_BAR:.0f} CPU seconds or {MEMORY_BAR // 2**20} MiB, measured per case as the peak of traced Python",
        "allocations (tracemalloc) and as the growth of the process's peak resident size over its resident size",
        "before the case (an upper bound that counts torch's native allocations). The process's own peak resident",
        "size (libraries, hypothesis's record of every case generated) is shown beside, with its size once the",
        "imports were done. Cases are hypothesis mutations of valid inputs",
        "(`tests/fuzz_targets.py`): the config target loads a tiny model directory through `load_checkpoint`,",
        "the manifest target parses and then formats and tokenizes what it accepted, the safetensors target",
        "validates and loads the bytes, the policy target goes through `load_policy_text`.",
        "",
        f"Seed {results['seed']}, {results['cases_per_target']} cases asked per target; "
        f"{results['wall_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU, on {results['machine']} "
        f"(load average at the end {results['load_average'][0]}).",
        "",
        "| target | cases | accepted | typed errors | by exit code | crashes | max CPU s/case | "
        "max traced MiB/case | max RSS growth MiB/case | process peak RSS MiB (after imports) | wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, r in results["targets"].items():
        codes = ", ".join(f"{code}: {n}" for code, n in r["exit_codes"].items() if code != "0")
        lines.append(
            f"| {target} | {r['cases']} | {r['accepted']} | {sum(r['typed_errors'].values())} | {codes} | "
            f"{r['crashes']} | {r['max_case_cpu_seconds']:.2f} | {r['max_case_traced_bytes'] / 2**20:.1f} | "
            f"{r['max_case_rss_growth_bytes'] / 2**20:.0f} | {r['process_max_rss_bytes'] / 2**20:.0f} "
            f"({r['process_max_rss_bytes_before'] / 2**20:.0f}) | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    lines += ["", "Typed errors by kind:", ""]
    for target, r in results["targets"].items():
        kinds = ", ".join(f"{kind} {n}" for kind, n in r["typed_errors"].items())
        lines.append(f"- {target}: {kinds}")
    verdict = "all bars met" if results["bars_met"] else "BARS MISSED"
    lines += ["", f"Result: {verdict}.", ""]
    for target, r in results["targets"].items():
        for sample in r["crash_samples"]:
            lines.append(f"- crash in {target}: `{sample['error']}`")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="hypothesis cases per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default=",".join(fuzz_targets.TARGETS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    results = {"seed": args.seed, "cases_per_target": args.cases, "targets": {},
               "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                          f"torch {torch.__version__}"}
    shm = Path("/dev/shm")  # the config target rewrites a file per case: memory-backed where there is one
    with tempfile.TemporaryDirectory(prefix="cbpt-fuzz-", dir=shm if shm.is_dir() else None) as scratch:
        for target in args.targets.split(","):
            results["targets"][target] = fuzz_target(target, args.cases, args.seed, scratch)
            r = results["targets"][target]
            print(f"{target}: {r['cases']} cases, {r['accepted']} accepted, {r['crashes']} crashes, "
                  f"max {r['max_case_cpu_seconds']} CPU s, {r['wall_seconds']} s", flush=True)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    results["load_average"] = [round(x, 1) for x in os.getloadavg()]
    results["bars_met"] = all(
        r["crashes"] == 0 and r["max_case_cpu_seconds"] <= SECONDS_BAR and r["max_case_traced_bytes"] <= MEMORY_BAR
        and r["max_case_rss_growth_bytes"] <= MEMORY_BAR for r in results["targets"].values())
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "fuzz.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "FUZZ.md").write_text(render(results))
    print(f"wrote {args.out / 'FUZZ.md'}; bars {'met' if results['bars_met'] else 'MISSED'}")
    return 0 if results["bars_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
