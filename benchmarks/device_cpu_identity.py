"""Is a CPU run's Verdict unchanged by the device layer? Run ``check`` with two source trees and compare the Verdicts.

    python benchmarks/device_cpu_identity.py --before /tmp/base-tree [--examples clean backdoored]
        [--before-json clean=/tmp/before-clean.json ...] [--after-json clean=/tmp/after-clean.json ...]

``--before`` is a checkout of the code to compare against (``git worktree add
/tmp/base-tree <commit>``); this tree is the "after". Each example is checked
(as ``examples/<name>`` from the tree's root, so the recorded path is the
same) with the default (strict) policy, seed 0, ``--device cpu`` where the tree
knows the flag, through ``cbpt-guard check --json``. The Verdicts are compared
as JSON with ``timings`` left out: every value that differs is listed by its
path, and so is every key one side has and the other lacks (the fields a newer
Verdict adds, which the older schema cannot have). ``--before-json`` and
``--after-json`` reuse Verdicts a tree already wrote with that command
(``--after`` names that tree when it is not this one). Each tree's own root in a
string (a ready policy's ``policy.source`` is a path inside the tree) reads
``<tree>`` before the comparison.
Writes benchmarks/results/device_cpu_identity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "benchmarks" / "results" / "device_cpu_identity.json"


def run_check(tree: Path, example: str, device_flag: bool) -> dict:
    """The Verdict of ``cbpt-guard check examples/<example> --json`` run with ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cbpt_guard", "check", f"examples/{example}", "--json"]  # the same path string
    if device_flag:
        command += ["--device", "cpu"]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if not done.stdout.strip().startswith("{"):
        raise SystemExit(f"{tree}: check of {example} printed no Verdict (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def differences(before, after, path: str = "") -> tuple[list[str], list[str], list[str]]:
    """(changed, only_before, only_after) JSON paths between two Verdicts."""
    changed, removed, added = [], [], []
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            where = f"{path}.{key}" if path else key
            if key not in after:
                removed.append(where)
            elif key not in before:
                added.append(where)
            else:
                c, r, a = differences(before[key], after[key], where)
                changed += c
                removed += r
                added += a
    elif before != after:
        changed.append(path)
    return changed, removed, added


def main() -> None:
    """Compare the examples' Verdicts between ``--before`` and this tree; print and write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", type=Path, default=HERE)
    parser.add_argument("--examples", nargs="+", default=["clean", "backdoored"])
    parser.add_argument("--before-json", nargs="*", default=[], metavar="EXAMPLE=FILE")
    parser.add_argument("--after-json", nargs="*", default=[], metavar="EXAMPLE=FILE")
    args = parser.parse_args()
    reused = dict(item.split("=", 1) for item in args.before_json)
    reused_after = dict(item.split("=", 1) for item in args.after_json)
    rows = {}
    for example in args.examples:
        before = (json.loads(Path(reused[example]).read_text()) if example in reused
                  else run_check(args.before, example, device_flag=False))
        after = (json.loads(Path(reused_after[example]).read_text()) if example in reused_after
                 else run_check(HERE, example, device_flag=True))
        before, after = _untree(before, args.before), _untree(after, args.after)
        before.pop("timings", None)
        after.pop("timings", None)
        changed, removed, added = differences(before, after)
        rows[example] = {"changed": changed, "only_before": removed,
                         "only_after": {path: _value(after, path) for path in added},
                         "decision": after["decision"]["action"], "score": (after.get("detection") or {}).get("score")}
        print(f"{example}: {len(changed)} value(s) changed {changed}; only before: {removed}; only after: "
              f"{rows[example]['only_after']}; decision {rows[example]['decision']}, score {rows[example]['score']}")
    RESULTS.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS.relative_to(HERE)}")


def _untree(verdict: dict, tree: Path) -> dict:
    """``verdict`` with ``tree``'s absolute path written ``<tree>`` in every string."""
    root = str(tree.resolve())
    return json.loads(json.dumps(verdict).replace(json.dumps(root)[1:-1], "<tree>"))


def _value(data: dict, path: str):
    for key in path.split("."):
        data = data[key]
    return data


if __name__ == "__main__":
    main()
