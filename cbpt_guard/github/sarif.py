"""Several checkpoints' SARIF logs as one log with one run, for a single code-scanning upload.

Code scanning rejects an upload with several runs of the same tool and category,
so the runs are folded into the first: rules are merged by id (each result's
``ruleIndex`` re-pointed), artifacts are appended (each ``artifactLocation.index``
shifted), results are concatenated in order.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence


def merge_sarif(logs: Sequence[dict]) -> dict:
    """One SARIF log whose single run holds every run of ``logs`` (a run with no results when there are none).

    The first run's tool, invocation and properties are kept; the others
    contribute rules, artifacts and results.
    """
    runs = [run for log in logs for run in log.get("runs", [])]
    if not runs:
        # One run with no results, rather than no run: code scanning reads it as "nothing found
        # now" and closes earlier alerts of this category, where an empty log may be refused.
        return {"version": "2.1.0", "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
                "runs": [{"tool": {"driver": {"name": "cbpt-guard", "rules": []}}, "results": []}]}
    base = logs[0]
    merged = copy.deepcopy(runs[0])
    rules = merged.setdefault("tool", {}).setdefault("driver", {}).setdefault("rules", [])
    rule_index = {rule.get("id"): i for i, rule in enumerate(rules)}
    artifacts = merged.setdefault("artifacts", [])
    results = merged.setdefault("results", [])
    for run in runs[1:]:
        run = copy.deepcopy(run)
        remap = {}
        for i, rule in enumerate(run.get("tool", {}).get("driver", {}).get("rules", [])):
            if rule.get("id") not in rule_index:
                rule_index[rule.get("id")] = len(rules)
                rules.append(rule)
            remap[i] = rule_index[rule.get("id")]
        offset = len(artifacts)
        artifacts.extend(run.get("artifacts", []))
        for result in run.get("results", []):
            if "ruleIndex" in result:
                result["ruleIndex"] = remap.get(result["ruleIndex"], result["ruleIndex"])
            _shift_artifact_indices(result, offset)
            results.append(result)
    if not artifacts:
        merged.pop("artifacts")
    return {key: value for key, value in base.items() if key != "runs"} | {"runs": [merged]}


def merge_sarif_files(paths: Sequence[str], out_path: str) -> str:
    """Merge the SARIF files at ``paths`` into ``out_path`` (written even when there are none); returns it."""
    logs = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            logs.append(json.load(handle))
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(merge_sarif(logs), handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return out_path


def _shift_artifact_indices(node: object, offset: int) -> None:
    """Add ``offset`` to every ``artifactLocation.index`` under ``node`` (in place)."""
    if isinstance(node, dict):
        location = node.get("artifactLocation")
        if isinstance(location, dict) and isinstance(location.get("index"), int):
            location["index"] += offset
        for value in node.values():
            _shift_artifact_indices(value, offset)
    elif isinstance(node, list):
        for value in node:
            _shift_artifact_indices(value, offset)
