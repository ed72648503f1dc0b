"""The sweep's own report: index.html, results.jsonl, summary.md and one combined SARIF log.

Every file is rendered from the :class:`SweepResult` and the Verdicts in the
store, so they cannot disagree with each other or with each model's own
report. index.html is self-contained (inline CSS and a few lines of script to
sort the table; no external resources) and autoescaped, so a model or class
name from an untrusted source cannot inject markup. summary.md stays under
64 KB (GitHub's step-summary limit is 1 MiB per step; a PR comment's is 64 K
characters), listing the blocked models first and pointing at results.jsonl
for the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from cbpt_guard.sweeper.records import SweepResult
from cbpt_guard.sweeper.store import ResultStore

SWEEP_FILES = {"html": "index.html", "jsonl": "results.jsonl", "markdown": "summary.md", "sarif": "results.sarif"}
SUMMARY_LIMIT = 64 * 1024 - 1024
"""summary.md's size cap in bytes, a margin below 64 KB for the closing line."""


def write_sweep_reports(result: SweepResult, out: Path, store: ResultStore) -> dict[str, str]:
    """Write the four sweep files into ``out`` (each through a temporary name); return role -> file name."""
    rendered = {
        "html": render_index(result),
        "jsonl": "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in result.results),
        "markdown": render_summary(result),
        "sarif": render_combined_sarif(result, store),
    }
    for role, text in rendered.items():
        target = out / SWEEP_FILES[role]
        temp = target.with_name(f".{target.name}.tmp")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, target)
    return dict(SWEEP_FILES)


def _counts(result: SweepResult) -> list[tuple[str, int]]:
    order = {"block": 0, "inconclusive": 1, "purify": 2, "purified": 3, "pass": 4}
    counts = Counter(r.action for r in result.results)
    return sorted(counts.items(), key=lambda item: (order.get(item[0], 9), item[0]))


def render_summary(result: SweepResult) -> str:
    """Markdown: the exit code, counts per decision, then one row per model (blocked first), under 64 KB."""
    head = [f"# cbpt-guard sweep: exit {result.exit_code}", "",
            f"{len(result.results)} models under policy `{result.policy}` (sha256 `{result.policy_sha256[:12]}`): "
            f"{result.scanned} checked, {result.reused} reused from the store, {result.failed} failed; "
            f"{result.wall_s:.1f} s.", "", "| decision | models |", "|---|---|"]
    head += [f"| {action} | {count} |" for action, count in _counts(result)]
    head += ["", "| model | decision | exit | score | suspected target | status |", "|---|---|---|---|---|---|"]
    text = "\n".join(head) + "\n"
    for shown, r in enumerate(result.results):
        score = "" if r.score is None else f"{r.score:.4f}"
        row = (f"| {_md(r.name)} | {r.action} | {r.exit_code} | {score} | {_md(r.suspected_target or '')} | "
               f"{r.status}{' of ' + _md(r.duplicate_of) if r.duplicate_of else ''} |\n")
        if len((text + row).encode("utf-8")) > SUMMARY_LIMIT:
            left = len(result.results) - shown
            return text + f"\n{left} more models (none worse than those above) are listed in results.jsonl.\n"
        text += row
    return text


def _md(text: str) -> str:
    """One table cell: no line breaks, pipes and markup characters escaped."""
    cleaned = " ".join(str(text).split())
    for char in "\\|*_`[]<>#":
        cleaned = cleaned.replace(char, "\\" + char)
    return cleaned[:200]


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>cbpt-guard sweep: exit {{ result.exit_code }}</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
th{cursor:pointer;background:#f4f4f4;user-select:none}th:after{content:" \\2195";color:#aaa}
.block{color:#b00;font-weight:bold}.inconclusive{color:#a60}.pass{color:#070}.purified{color:#06a}
td.num{text-align:right;font-variant-numeric:tabular-nums}
</style></head><body>
<h1>cbpt-guard sweep: exit {{ result.exit_code }}</h1>
<p>{{ result.results|length }} models under policy <code>{{ result.policy }}</code>
(sha256 <code>{{ result.policy_sha256[:12] }}</code>): {{ result.scanned }} checked, {{ result.reused }} reused
from the store, {{ result.failed }} failed; {{ "%.1f"|format(result.wall_s) }} s.
{% for action, count in counts %}<span class="{{ action }}">{{ action }}: {{ count }}</span>
{{- "; " if not loop.last }}{% endfor %}</p>
<table id="models"><thead><tr>
<th data-type="text">model</th><th data-type="num">severity</th><th data-type="text">decision</th>
<th data-type="num">exit</th><th data-type="num">score</th><th data-type="text">suspected target</th>
<th data-type="num">time (s)</th><th data-type="text">status</th><th data-type="text">digest</th>
<th data-type="text">report</th></tr></thead><tbody>
{% for r in result.results %}<tr>
<td title="{{ r.path }}">{{ r.name }}</td><td class="num">{{ severity[r.exit_code] }}</td>
<td class="{{ r.action }}" title="{{ r.reasons|join('; ') }}">{{ r.action }}</td><td class="num">{{ r.exit_code }}</td>
<td class="num">{{ "" if r.score is none else "%.4f"|format(r.score) }}</td><td>{{ r.suspected_target or "" }}</td>
<td class="num">{{ "" if r.seconds is none else "%.1f"|format(r.seconds) }}</td>
<td>{{ r.status }}{% if r.duplicate_of %} of {{ r.duplicate_of }}{% endif %}</td>
<td><code>{{ r.digest[:12] }}</code></td>
<td>{% if r.report %}<a href="{{ r.report }}">report.html</a>
{%- else %}{{ r.reasons[0] if r.reasons else "" }}{% endif %}</td>
</tr>
{% endfor %}</tbody></table>
<script>
document.querySelectorAll("#models th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.dir !== "up"; th.dataset.dir = up ? "up" : "down";
    var num = th.dataset.type === "num";
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent.trim(), y = b.cells[col].textContent.trim();
      var c = num ? (parseFloat(x || "-1") - parseFloat(y || "-1")) : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
</script>
</body></html>
"""


def render_index(result: SweepResult) -> str:
    """The sweep's index.html: every model in a sortable table, linking its own report.html."""
    from jinja2 import Environment

    from cbpt_guard.sweeper.records import SEVERITY

    template = Environment(autoescape=True).from_string(_INDEX)
    return template.render(result=result, counts=_counts(result), severity={c: SEVERITY.get(c, 2) for c in range(256)})


def render_combined_sarif(result: SweepResult, store: ResultStore) -> str:
    """One SARIF 2.1.0 log for the sweep: every model's findings in one run, each at its own path.

    A model checked once for several names (duplicates) gets its findings at
    every name. A model with no Verdict (failed) gets a CBPT004 "step
    incomplete" result, so code scanning never reads it as clean.
    """
    from cbpt_guard.report import read_verdict
    from cbpt_guard.report.findings import RULES
    from cbpt_guard.report.sarif import SARIF_SCHEMA_URI, SARIF_VERSION, _dump, sarif_log

    driver, results = None, []
    incomplete = next(i for i, rule in enumerate(RULES) if rule.id == "CBPT004")
    for r in result.results:
        if r.report is None:
            location = _location(r.path, None)
            fingerprint = hashlib.sha256(f"{r.digest}:CBPT004:sweep-failed".encode()).hexdigest()
            results.append({"ruleId": "CBPT004", "ruleIndex": incomplete, "kind": "fail",
                            "level": "error" if r.exit_code == 1 else "warning",
                            "message": {"text": f"{r.name}: {'; '.join(r.reasons)}"}, "locations": [location],
                            "partialFingerprints": {"cbptGuardFinding/v1": fingerprint},
                            "properties": {"checkpointDigest": r.digest, "decision": r.action}})
            continue
        verdict = read_verdict(Path(result.out_dir) / Path(r.report).parent / "verdict.json")
        location = _location(r.path, verdict)
        run = sarif_log(verdict)["runs"][0]
        driver = driver or run["tool"]
        for item in run["results"]:
            item["message"]["text"] = f"{r.name}: {item['message']['text']}"
            item["locations"] = [location]
            results.append(item)
    from cbpt_guard import __version__
    from cbpt_guard.report.sarif import _rule

    driver = driver or {"driver": {"name": "cbpt-guard", "version": __version__, "rules": [_rule(r) for r in RULES]}}
    run = {"tool": driver, "invocations": [{"executionSuccessful": result.failed == 0, "exitCode": result.exit_code}],
           "results": results[:25_000],
           "properties": {"sweep": True, "models": len(result.results), "policySha256": result.policy_sha256,
                          "resultsLeftOut": max(0, len(results) - 25_000)}}
    return _dump({"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]})


def _location(path: str, verdict) -> dict:
    """Where a model's results point: its weights file (inside a model folder) or the file itself."""
    from cbpt_guard.report.sarif import artifact_uri

    target = Path(path)
    weights = [f.path for f in verdict.checkpoint.files if f.role == "weights"] if verdict is not None else []
    if target.is_dir() and weights:
        target = target / weights[0]
    uri, relative = artifact_uri(str(target))
    artifact = {"uri": uri, "uriBaseId": "%SRCROOT%"} if relative else {"uri": uri}
    return {"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}}
