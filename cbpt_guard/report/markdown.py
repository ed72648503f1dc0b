"""The Markdown summary: for ``$GITHUB_STEP_SUMMARY`` and pull-request comments.

Two constraints shape it. GitHub caps a comment at 65,536 characters, so the
summary stays under :data:`MAX_BYTES` however many classes, reasons or steps the
run has: every list is cut to what fits, with a count of what was left out.
And every string that came from the checkpoint or a file (class names, paths,
manifest text, reasons, waiver text) goes through :func:`escape_markdown`, so it
renders as the literal text: no links, emphasis, tables, HTML, mentions or
issue references can be smuggled in.
"""

from __future__ import annotations

from cbpt_guard.report import text
from cbpt_guard.report.findings import findings
from cbpt_guard.verdict import Verdict

MAX_BYTES = 60_000
"""Hard ceiling on the summary's UTF-8 size, comfortably under GitHub's 65,536-character comment limit."""

_ZERO_WIDTH_SPACE = "\u200b"
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
# Every ASCII punctuation character with a meaning somewhere in GitHub Markdown
# (CommonMark allows a backslash before any of them). '@' and '#' are handled apart.
_BACKSLASHED = set("\\`*_{}[]()+-.!|~:$=^")
ICONS = {"pass": "✅", "purified": "🟡", "purify": "⚠️", "inconclusive": "❔", "block": "🛑"}
LEVEL_ICONS = {"error": "❌", "warning": "⚠️", "note": "ℹ️"}


def escape_markdown(value: object, limit: int = 200) -> str:
    """``value`` as inert Markdown text: one line, at most ``limit`` characters before escaping.

    HTML-significant characters become entities; Markdown punctuation gets a
    backslash; ``@`` and ``#`` are followed by a zero-width space so GitHub
    makes no mention or issue reference of them.
    """
    out = []
    for char in text.one_line(value, limit):
        if char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char in _BACKSLASHED:
            out.append("\\" + char)
        elif char in "@#":
            out.append("\\" + char + _ZERO_WIDTH_SPACE)
        else:
            out.append(char)
    return "".join(out)


def _code(value: object, limit: int = 200) -> str:
    """Untrusted text in a monospace span; an HTML ``<code>`` element, because a backtick span cannot be escaped."""
    return f"<code>{escape_markdown(value, limit)}</code>"


def _size(lines: list[str]) -> int:
    return len("\n".join(lines).encode("utf-8")) + 1


def _fit(head: list[str], items: list[str], budget: int, noun: str, tail: list[str] = ()) -> list[str]:
    """``head``, then as many ``items`` as fit in ``budget`` bytes, a count of the rest, then ``tail``."""
    lines = list(head)
    reserve = _size(list(tail)) + 120
    for shown, item in enumerate(items):
        if _size(lines + [item]) + reserve > budget:
            lines.append(f"\n*… and {len(items) - shown:,} more {noun} not shown; see the HTML report.*")
            break
        lines.append(item)
    return lines + list(tail) + [""]


def _header(verdict: Verdict) -> list[str]:
    decision, checkpoint = verdict.decision, verdict.checkpoint
    word = text.ACTION_WORDS[decision.action]
    rows = [
        ("Decision", f"**{word}** (exit {decision.exit_code}, mode {escape_markdown(decision.mode, 20)})"
         + (f"; enforce would **{text.ACTION_WORDS[decision.enforced]}**"
            if decision.enforced != decision.action else "")
         + ("; the run was incomplete and fails closed" if decision.fail_closed else "")),
        ("Checkpoint", _code(checkpoint.path)),
        ("Digest", _code(checkpoint.digest, 80)),
        ("Model", f"{escape_markdown(checkpoint.architecture, 80)}, {checkpoint.parameter_count:,} parameters, "
                  f"{len(checkpoint.classes):,} classes"),
        ("Policy", f"{escape_markdown(verdict.policy.name, 80)} ({_code(text.short_digest(verdict.policy.sha256))}), "
                   f"mode {escape_markdown(verdict.policy.mode, 20)}"),
        ("Detection", _detection_cell(verdict)),
        ("Purification", _purification_cell(verdict)),
        ("Export", _export_cell(verdict)),
    ]
    lines = [f"## {ICONS[decision.action]} cbpt-guard: {word}", "", escape_markdown(text.headline(verdict), 600), ""]
    lines += _deploy_note(verdict)
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines + [""]


def _deploy_note(verdict: Verdict) -> list[str]:
    """For a purified pass, the one thing a reader must not miss: which artefact may be deployed."""
    if verdict.decision.action != "purified":
        return []
    what = []
    if verdict.export is not None and verdict.export.path and verdict.export.purified:
        what.append(f"ONNX {_code(verdict.export.path, 200)}")
    if verdict.purification is not None and verdict.purification.prompts_path:
        what.append(f"prompts {_code(verdict.purification.prompts_path, 200)}")
    where = f" ({', '.join(what)})" if what else ""
    advice = escape_markdown(text.PURIFIED_ADVICE, 200)
    return [f"> **{advice[:1].upper() + advice[1:]}**{where}. The checked weights carry a backdoor; the purified "
            "classifier met the policy's bars.", ""]


def _not_run(verdict: Verdict, step: str) -> str:
    """"not run", with the step's own reason when the Verdict records one."""
    note = text.step_notes(verdict).get(step)
    return f"{text.NOT_RUN} ({escape_markdown(note, 200)})" if note else text.NOT_RUN


def _detection_cell(verdict: Verdict) -> str:
    detection = verdict.detection
    if detection is None:
        return _not_run(verdict, "detection")
    relation = "≥" if detection.score >= detection.threshold else "<"
    cell = (f"{escape_markdown(detection.outcome, 60)}: score {text.score(detection.score)} {relation} threshold "
            f"{text.score(detection.threshold)}")
    if detection.suspected_target is not None:
        cell += f"; suspected target **{escape_markdown(detection.suspected_target, 120)}**"
    free = text.reference_free(detection)
    if free is not None:
        cell += f"; {escape_markdown(free, 200)}"
    if detection.uncalibrated:
        cell += f"; **{escape_markdown(detection.uncalibrated, 600)}**"
    return cell


def _purification_cell(verdict: Verdict) -> str:
    purification = verdict.purification
    if purification is None:
        return _not_run(verdict, "purification")
    parts = ["bars met" if purification.bars_met else "**bars missed**"]
    for row in text.dummy_asr_rows(verdict)[:5]:
        parts.append(f"ASR, {escape_markdown(row.label(), 80)}: {text.pct(row.before)} → {text.pct(row.after)}")
    before, after = purification.before.clean_accuracy, purification.after.clean_accuracy
    if before is not None or after is not None:
        parts.append(f"clean accuracy {text.pct(before)} → {text.pct(after)}")
    return "; ".join(parts)


def _export_cell(verdict: Verdict) -> str:
    export = verdict.export
    if export is None:
        return _not_run(verdict, "export")
    cell = "parity passed" if export.passed else "**failed**"
    if export.max_abs_diff is not None:
        cell += f" (max abs logit diff {text.sci(export.max_abs_diff)}, tolerance {text.sci(export.tolerance)})"
    if export.error:
        cell += f": {escape_markdown(export.error, 300)}"
    return cell


def _reasons(verdict: Verdict) -> list[str]:
    items = [f"{i}. {escape_markdown(reason, 400)}" for i, reason in enumerate(verdict.decision.reasons, 1)]
    return _fit(["**Why**", ""], items or ["*No reasons were recorded.*"], 12_000, "reasons")


def _findings(verdict: Verdict) -> list[str]:
    found = findings(verdict)
    if not found:
        return []
    items = []
    for f in found:
        waived = " *(waived: " + "; ".join(
            f"{escape_markdown(w.id, 64)} by {escape_markdown(w.owner, 80)} until {escape_markdown(w.expires, 20)}: "
            f"{escape_markdown(w.reason, 200)}" for w in f.waivers[:3]) + ")*" if f.waivers else ""
        items.append(f"- {LEVEL_ICONS.get(f.level, '')} **{f.level}** {f.rule.name}: "
                     f"{escape_markdown(f.message, 500)}{waived}")
    return _fit(["### Findings", ""], items, 10_000, "findings")


def _families(verdict: Verdict) -> list[str]:
    detection = verdict.detection
    if detection is None or not detection.families:
        return []
    head = ["### Trigger families", "", "| Family | Collapsed | Target | Concentration | Inverted ASR | z |",
            "|---|---|---|---:|---:|---:|"]
    def collapsed(family) -> str:  # bold only for a family that is the evidence, never on a clean model
        if not family.collapsed:
            return "no"
        return "**yes, the evidence**" if text.family_is_evidence(detection, family) else "yes"

    items = [f"| {escape_markdown(f.family, 30)} | {collapsed(f)} | "
             f"{escape_markdown(f.target, 80)} | {text.pct(f.concentration)} | {text.pct(f.inverted_asr)} | "
             f"{text.num(f.z, 2)} |" for f in detection.families]
    return _fit(head, items, 6_000, "families")


def _purification(verdict: Verdict) -> list[str]:
    purification = verdict.purification
    if purification is None:
        return []
    head = ["### Purification", "", "| Metric | Before | After | Bar |", "|---|---:|---:|---:|"]
    max_drop = purification.bars.get("max_ca_drop")
    before, after = purification.before, purification.after
    items = [f"| clean accuracy | {text.pct(before.clean_accuracy)} | {text.pct(after.clean_accuracy)} | "
             f"drop ≤ {text.pct(max_drop)} |",
             f"| agreement with original | {text.pct(before.agreement)} | {text.pct(after.agreement)} | |"]
    items += [f"| ASR, {escape_markdown(row.label(), 80)} | {text.pct(row.before)} | {text.pct(row.after)} | "
              f"≤ {text.pct(row.bar)} |" for row in text.dummy_asr_rows(verdict)]
    tail = [f"\nRe-check of the purified classifier: {escape_markdown(purification.recheck_outcome, 80)} "
            f"(score {text.score(purification.recheck_score)})."]
    own_rate = text.own_rate_families(verdict)
    if own_rate:
        tail.append(f"{escape_markdown(', '.join(own_rate[:10]), 200)}: {escape_markdown(text.OWN_RATE_NOTE, 200)}.")
    if purification.misses:
        tail.append("Missed: " + "; ".join(escape_markdown(m, 200) for m in purification.misses[:10]) + ".")
    return _fit(head, items, 5_000, "metrics", tail)


def _steps(verdict: Verdict) -> list[str]:
    rows = text.incomplete_steps(verdict)
    if not rows:
        return []
    head = ["### Steps skipped or failed", "", "| Step | State | Required | Why |", "|---|---|---|---|"]
    items = [f"| {_code(name, 80)} | {escape_markdown(state, 20)} | {'yes' if required else 'no'} | "
             f"{escape_markdown(reason, 300)} |" for name, state, reason, required in rows]
    return _fit(head, items, 8_000, "steps")


def _waivers(verdict: Verdict) -> list[str]:
    policy = verdict.policy
    items = [f"- applied: {escape_markdown(w.id, 64)} (owner {escape_markdown(w.owner, 80)}, until "
             f"{escape_markdown(w.expires, 20)}): {escape_markdown(w.reason, 300)}" for w in policy.waivers_applied]
    items += [f"- **expired** on {escape_markdown(w.expires, 20)}: {escape_markdown(w.id, 64)} (owner "
              f"{escape_markdown(w.owner, 80)}); its finding is active again" for w in policy.waivers_expired]
    return _fit(["### Waivers", ""], items, 4_000, "waivers") if items else []


def _details(verdict: Verdict) -> list[str]:
    versions = verdict.versions
    seeds = f"run {verdict.seed}"
    if verdict.detection is not None:
        seeds += f", detection {verdict.detection.seed}"
    if verdict.purification is not None:
        seeds += f", re-check {verdict.purification.recheck_seed}"
    timings = ", ".join(f"{escape_markdown(stage, 40)} {text.seconds(value)}"
                        for stage, value in text.ordered_timings(verdict)[:20]) or "not recorded"
    rows = [("Evaluated on", escape_markdown(verdict.evaluated_on, 20)),
            ("Device", escape_markdown(verdict.device_label, 160)),
            ("Seeds", seeds),
            ("Versions", "; ".join(f"{name} {escape_markdown(value, 40)}" for name, value in (
                ("cbpt-guard", versions.cbpt_guard), ("Python", versions.python), ("torch", versions.torch),
                ("open_clip", versions.open_clip), ("onnxruntime", versions.onnxruntime)) if value)),
            ("Timings", timings)]
    return (["<details><summary>Run details</summary>", "", "| | |", "|---|---|"]
            + [f"| {name} | {value} |" for name, value in rows] + ["", "</details>", ""])


def render_markdown(verdict: Verdict, *, max_bytes: int = MAX_BYTES) -> str:
    """The summary for ``verdict``, at most ``max_bytes`` bytes of UTF-8 (whole sections left out if need be)."""
    footer = [f"<sub>cbpt-guard {escape_markdown(verdict.versions.cbpt_guard, 40)}; the HTML report and the "
              "JSON verdict hold the full evidence.</sub>"]
    lines: list[str] = []
    left_out = 0
    for section in (_header, _reasons, _findings, _families, _purification, _steps, _waivers, _details):
        block = section(verdict)
        if _size(lines + block + footer) + 200 > max_bytes:
            left_out += 1
            continue
        lines += block
    if left_out:
        lines.append(f"*{left_out} section(s) left out to stay under GitHub's comment size limit.*")
        lines.append("")
    summary = "\n".join(lines + footer) + "\n"
    if len(summary.encode("utf-8")) > max_bytes:  # only a max_bytes too small for the header gets here
        cut = summary.encode("utf-8")[: max_bytes - 100].decode("utf-8", errors="ignore")
        summary = cut[: cut.rfind("\n") + 1] + "\n*Summary cut to stay under the size limit.*\n"
    return summary
