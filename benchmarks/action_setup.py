"""Time the Action's setup on a runner without a GPU: a first run (empty cache) against a second (cache restored).

The runner is simulated as closely as one machine allows:

- action.yml's own steps run, in order, up to the gate step: its ``run:`` steps
  as the runner runs a composite action's bash steps (the step's ``env:``
  evaluated to values, the script run with ``bash --noprofile --norc -eo
  pipefail``, outputs read back from ``$GITHUB_OUTPUT``), so what is timed is
  scripts/action-setup.sh exactly as the Action calls it;
- the ``actions/cache/restore`` and ``actions/cache/save`` steps are replaced by
  what they do: a zstd-compressed tar of the venv's path in a cache folder
  (``--long=30``, as actions/cache compresses), restored by exact key or by the
  newest entry under a restore-key prefix; an existing key is never overwritten;
- each run starts from a fresh runner folder (``RUNNER_TEMP`` at the same path,
  as on a hosted runner, an empty pip cache and HOME); only the cache folder
  survives from the first run to the second;
- after each setup, ``cbpt-guard inspect examples/clean`` runs with the venv's
  entry point and is timed.

What differs from a hosted runner, and is written into the results: the cache
is a local file (no download or upload), the first run's packages come from
this machine's registries (``CBPT_TORCH_INDEX_URL`` set empty: the CPU-only
index is not reachable here, so torch is whatever build these registries serve,
which the results record), and the machine is shared.

Usage: python benchmarks/action_setup.py [--work /tmp/cbpt-action-bench] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_EXPRESSION = re.compile(r"^\$\{\{\s*(inputs|steps)\.([A-Za-z0-9_-]+)(?:\.outputs\.([A-Za-z0-9_-]+))?\s*\}\}$")
_CONDITION = re.compile(r"^(?:\$\{\{\s*)?steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)"
                        r"\s*==\s*'([^']*)'(?:\s*\}\})?$")


def copy_action(destination: Path) -> None:
    """The action's files as a workflow gets them: the tracked and unignored files of this tree, nothing built."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def evaluate(value, inputs: dict, outputs: dict, defaults: dict) -> str:
    """An ``env:`` or ``with:`` value as the runner evaluates it (the plain forms action.yml uses)."""
    match = _EXPRESSION.match(str(value))
    if not match:
        return str(value)
    kind, name, output = match.groups()
    if kind == "inputs":
        return inputs.get(name, str(defaults[name].get("default", "")))
    return outputs.get(name, {}).get(output, "")


def condition(text: str | None, outputs: dict) -> bool:
    """A step's ``if:``: only the ``steps.ID.outputs.NAME == 'VALUE'`` form action.yml's setup steps use."""
    if text is None:
        return True
    match = _CONDITION.match(str(text).strip())
    if not match:
        raise SystemExit(f"the simulated runner does not understand the condition {text!r}")
    step, name, value = match.groups()
    return outputs.get(step, {}).get(name, "") == value


def read_outputs(path: Path) -> dict:
    """``name=value`` lines of a ``$GITHUB_OUTPUT`` file (the setup steps write no multi-line values)."""
    values = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, _, value = line.partition("=")
        values[name] = value
    return values


def cache_restore(cache: Path, path: str, key: str, restore_keys: str) -> dict:
    """actions/cache/restore: the exact key, else the newest entry whose key starts with a restore key."""
    entries = sorted(cache.glob("*.tar.zst"), key=lambda p: p.stat().st_mtime, reverse=True)
    names = {p.name.removesuffix(".tar.zst"): p for p in entries}
    matched = key if key in names else next(
        (name for prefix in restore_keys.split() for name in names if name.startswith(prefix)), None)
    if matched is None:
        return {"cache-hit": "false", "cache-matched-key": ""}
    subprocess.run(f"zstd -d --long=30 -q -c {names[matched]} | tar -xf - -C /", shell=True, check=True)
    return {"cache-hit": str(matched == key).lower(), "cache-matched-key": matched}


def cache_save(cache: Path, path: str, key: str) -> dict:
    """actions/cache/save: archive ``path`` under ``key``, unless an entry of that key exists."""
    target = cache / f"{key}.tar.zst"
    if not target.exists():
        relative = os.path.relpath(path, "/")
        subprocess.run(f"tar -cf - -C / {relative} | zstd -q -T0 --long=30 -o {target}", shell=True, check=True)
    return {}


def run_setup(action: Path, runner: Path, cache: Path, inputs: dict) -> tuple[list[dict], dict]:
    """Run action.yml's steps before the gate step; (one timing row per step, every step's outputs)."""
    document = yaml.safe_load((action / "action.yml").read_text())
    temp, home = runner / "_temp", runner / "home"
    for folder in (temp, home, runner / "workspace"):
        folder.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, dict] = {}
    rows = []
    for index, step in enumerate(document["runs"]["steps"]):
        if step.get("id") == "gate":
            break
        step_id = step.get("id", str(index))
        if not condition(step.get("if"), outputs):
            rows.append({"step": step.get("name", step_id), "ran": False, "seconds": 0.0})
            continue
        started = time.perf_counter()
        if "uses" in step:
            given = {k: evaluate(v, inputs, outputs, document["inputs"]) for k, v in (step.get("with") or {}).items()}
            if step["uses"].startswith("actions/cache/restore@"):
                outputs[step_id] = cache_restore(cache, given["path"], given["key"], given.get("restore-keys", ""))
            elif step["uses"].startswith("actions/cache/save@"):
                outputs[step_id] = cache_save(cache, given["path"], given["key"])
            else:
                raise SystemExit(f"the simulated runner cannot run {step['uses']}")
        else:
            script, output_file = temp / f"step{index}.sh", temp / f"output{index}.txt"
            script.write_text(step["run"])
            env = {k: v for k, v in os.environ.items() if k == "PATH" or k.startswith("PIP_")}
            env |= {"HOME": str(home), "RUNNER_TEMP": str(temp), "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64",
                    "GITHUB_ACTION_PATH": str(action), "GITHUB_WORKSPACE": str(runner / "workspace"),
                    "GITHUB_OUTPUT": str(output_file), "PIP_CACHE_DIR": str(runner / "pip-cache"),
                    "CBPT_TORCH_INDEX_URL": ""}
            env |= {k: evaluate(v, inputs, outputs, document["inputs"]) for k, v in (step.get("env") or {}).items()}
            done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                                  cwd=runner / "workspace", env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"step {step_id} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            outputs[step_id] = read_outputs(output_file)
            print(done.stdout.strip(), flush=True)
        rows.append({"step": step.get("name", step_id), "ran": True,
                     "seconds": round(time.perf_counter() - started, 2)})
        print(f"  {rows[-1]['step']}: {rows[-1]['seconds']} s", flush=True)
    return rows, outputs


def timed_inspect(venv_python: str, action: Path) -> dict:
    """``cbpt-guard inspect examples/clean`` with the venv's entry point: wall time and exit code."""
    entry = str(Path(venv_python).parent / "cbpt-guard")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")} | {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([entry, "inspect", "examples/clean"], cwd=action, env=env, capture_output=True, text=True)
    return {"seconds": round(time.perf_counter() - started, 2), "exit_code": done.returncode,
            "first_line": (done.stdout.splitlines() or [done.stderr.strip()])[0]}


def du(path: Path) -> int:
    """Bytes in the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


_CUDA_ONLY = """
import importlib.metadata as m, json, os
names = ("nvidia-", "nvidia_", "cuda-", "cuda_", "triton")
total = 0
for dist in m.distributions():
    if dist.metadata["Name"].lower().startswith(names):
        for file in dist.files or ():
            path = dist.locate_file(file)
            if os.path.isfile(path) and not os.path.islink(path):
                total += os.path.getsize(path)
print(total)
"""


def cuda_only_bytes(venv_python: str) -> int:
    """Bytes of the installed CUDA-only packages (``nvidia-*``, ``cuda-*``, ``triton``): none in a CPU-only venv."""
    done = subprocess.run([venv_python, "-c", _CUDA_ONLY], capture_output=True, text=True, check=True)
    return int(done.stdout)


def write_markdown(results: dict, path: Path) -> None:
    """benchmarks/ACTION.md from the results (never typed)."""
    first, second = results["runs"]
    steps = [row["step"] for row in first["steps"]]
    lines = [
        "# The Action's setup on a runner without a GPU: first run against a cached second run",
        "",
        f"Written by `{results['command']}` on {results['machine']}; "
        f"load average {results['load_before']} before, {results['load_after']} after (1, 5, 15 minutes).",
        "",
        "| step | first run (empty cache) | second run (cache restored) |",
        "|---|---|---|",
    ]
    for name in steps:
        cells = []
        for run in (first, second):
            row = next(r for r in run["steps"] if r["step"] == name)
            cells.append(f"{row['seconds']:.1f} s" if row["ran"] else "skipped")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += [
        f"| **setup, total** | **{first['setup_seconds']:.1f} s** | **{second['setup_seconds']:.1f} s** |",
        f"| `cbpt-guard inspect examples/clean` | {first['inspect']['seconds']:.1f} s "
        f"(exit {first['inspect']['exit_code']}) | {second['inspect']['seconds']:.1f} s "
        f"(exit {second['inspect']['exit_code']}) |",
        "",
        f"Second run: cache {second['cache']}; setup {first['setup_seconds'] / second['setup_seconds']:.1f}x "
        f"faster than the first; goal under 60 s: {'met' if second['setup_seconds'] < 60 else 'NOT met'}.",
        "",
        f"- venv: {results['venv_bytes'] / 2**30:.2f} GiB on disk; cache entry (tar + zstd --long=30): "
        f"{results['cache_bytes'] / 2**20:.0f} MiB.",
        f"- torch installed by the first run: `{results['torch_build']}`; its CUDA-only packages (`nvidia-*`, "
        f"`cuda-*`, `triton`), which a CPU-only venv does not have, take {results['cuda_only_bytes'] / 2**30:.2f} GiB "
        "of the venv.",
        f"- Load average at the start of each run: {first['load']} and {second['load']} (1, 5, 15 minutes).",
        "",
        "What this simulation does not include, so a hosted runner differs:",
        "",
        "- The cache is a local file: a runner also downloads it (restore) and uploads it (save) over the network.",
        "- The packages came from this machine's registries, from local disk for torch. The CPU-only torch index",
        "  that the Action uses for `device: cpu` cannot be reached here, so the torch installed was the build",
        "  recorded above. Where that is the CUDA build, the venv holds the CUDA-only packages measured above and",
        "  torch's own CUDA kernels, which the CPU-only build has neither of; restore time grows with the bytes",
        "  restored, so the restore and save times here are upper bounds for `device: cpu` (not measured with",
        "  the CPU-only build, which cannot be installed here).",
        "- The machine is shared with other work (load averages above); timings vary with it.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cbpt-action-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--python", default="python3", help="the runner's interpreter (the Action's python input)")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    action, runner, cache = args.work / "action", args.work / "runner", args.work / "cache"
    action.mkdir(parents=True)
    cache.mkdir()
    copy_action(action)
    inputs = {"device": "cpu", "install": "true", "python": args.python, "image": "", "scan": "full"}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = []
    for number in (1, 2):
        if runner.exists():
            shutil.rmtree(runner)  # a fresh runner: only the cache folder carries over
        print(f"run {number}", flush=True)
        load = os.getloadavg()
        started = time.perf_counter()
        rows, outputs = run_setup(action, runner, cache, inputs)
        setup = round(time.perf_counter() - started, 2)
        restore = next((o for o in outputs.values() if "cache-hit" in o), {})
        runs.append({"run": number, "load": " ".join(f"{x:.2f}" for x in load), "steps": rows, "setup_seconds": setup,
                     "cache": ("hit" if restore.get("cache-hit") == "true" else
                               "partial" if restore.get("cache-matched-key") else "miss"),
                     "inspect": timed_inspect(outputs["install"]["python"], action)})
        if number == 1:
            venv = Path(outputs["plan"]["venv"])
            venv_bytes = du(venv)
            cuda_bytes = cuda_only_bytes(outputs["install"]["python"])
            torch_build = subprocess.run([outputs["install"]["python"], "-c", "import torch; print(torch.__version__)"],
                                         capture_output=True, text=True).stdout.strip()
        print(json.dumps(runs[-1]), flush=True)
    results = {
        "command": " ".join(["python", "benchmarks/action_setup.py", *sys.argv[1:]]),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "inputs": inputs,
        "torch_build": torch_build,
        "venv_bytes": venv_bytes,
        "cuda_only_bytes": cuda_bytes,
        "cache_bytes": sum(p.stat().st_size for p in cache.glob("*.tar.zst")),
        "runs": runs,
    }
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "action.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "ACTION.md")
    print(f"wrote {args.out / 'ACTION.md'}")
    return 0 if all(run["inspect"]["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
