"""The findings of a run, one per problem, as every alert-style format lists them.

A finding is something a reviewer must act on or sign off: unsafe
serialisation, backdoor evidence, a purified model that missed the policy's
bars, a step that was skipped or failed. SARIF turns each into a result; the
Markdown summary and the HTML report list the same ones, so no format can show
an alert the others leave out.
"""

from __future__ import annotations

import dataclasses

from cbpt_guard.detect.outcome import Outcome
from cbpt_guard.report import text
from cbpt_guard.verdict import Verdict, WaiverInfo

MESSAGE_LIMIT = 2000
"""Longest message text, in characters, whatever the checkpoint names contain."""
NAME_LIMIT = 200
"""Longest class name, path or reason quoted inside a message."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One kind of finding: a stable id, a short name and the words a reviewer reads first."""

    id: str
    name: str
    short: str
    full: str
    level: str
    """Default SARIF level: error, warning or note."""


RULES: tuple[Rule, ...] = (
    Rule("CBPT001", "unsafe-serialisation",
         "The checkpoint's serialisation would run code or import something no checkpoint needs.",
         "A pickle in the checkpoint imports globals that a plain tensor checkpoint never needs; loading it "
         "could execute code. cbpt-guard refused to load it. Re-save the weights as safetensors.", "error"),
    Rule("CBPT002", "backdoor-evidence",
         "Trigger inversion found evidence of a backdoor.",
         "Without labels, cbpt-guard inverted candidate triggers and found one that sends most inputs to a "
         "single class, further from clean models than the calibrated threshold allows. The report shows "
         "the inverted trigger and the class it points to.", "error"),
    Rule("CBPT003", "purification-missed-bars",
         "The purified classifier misses the policy's bars.",
         "Class-wise prompt tuning ran, but the purified classifier's attack success rate, clean-accuracy "
         "drop or re-check did not meet the bars the policy sets.", "error"),
    Rule("CBPT004", "step-incomplete",
         "A step of the run was skipped or failed.",
         "A stage of the check did not finish. A run that could not look properly never passes: it is "
         "reported inconclusive or blocked, as the policy says.", "warning"),
)
RULE_BY_NAME = {rule.name: rule for rule in RULES}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem the run found, worded as plain one-line text (untrusted parts already shortened)."""

    rule: Rule
    level: str
    message: str
    key: str = ""
    """Tells apart several findings of one rule (the step name); empty when a rule fires once."""
    waivers: tuple[WaiverInfo, ...] = ()
    """Active waivers that accept this finding."""


def _quote(value: object) -> str:
    return "'" + text.one_line(value, NAME_LIMIT) + "'"


def _unsafe(verdict: Verdict) -> list[Finding]:
    found = verdict.checkpoint.unsafe_findings
    if not found:
        return []
    shown = ", ".join(text.one_line(g, NAME_LIMIT) for g in found[:20])
    if len(found) > 20:
        shown += f" and {len(found) - 20} more"
    blocks = text.setting(verdict.policy.settings, "evidence", "unsafe_serialisation_blocks", default=True) is not False
    message = (f"Loading {_quote(verdict.checkpoint.path)} was refused: a pickle in it imports {shown}, which no "
               "checkpoint needs.")
    if not blocks:
        message += " The policy reports this without blocking."
    return [Finding(RULE_BY_NAME["unsafe-serialisation"], "error" if blocks else "warning", message)]


def _backdoor(verdict: Verdict) -> list[Finding]:
    detection = verdict.detection
    if detection is None or detection.outcome != Outcome.FOUND:
        return []
    message = (f"Backdoor evidence found in {_quote(verdict.checkpoint.path)}: score {text.score(detection.score)} "
               f"{'>=' if detection.score >= detection.threshold else '<'} threshold {text.score(detection.threshold)}")
    if text.reference_free(detection) is not None:
        message += f"; {text.reference_free(detection)}"
    if detection.uncalibrated:
        message += f"; {text.one_line(detection.uncalibrated, 600)}"
    if detection.suspected_target is not None:
        message += f"; suspected target class {_quote(detection.suspected_target)}"
    collapsed = [f"{text.one_line(f.family, 40)} (to {_quote(f.target)}, {text.pct(f.concentration, 0)} of "
                 "stamped probes)" for f in detection.families if f.collapsed]
    if collapsed:
        message += "; triggers that collapsed: " + ", ".join(collapsed[:10])
    message += "."
    level = "error"
    if verdict.decision.action == "purified":
        # The finding stays: these weights are backdoored. Its level is the policy's (decision.purified_level).
        message += f" The purified classifier met the policy's bars: {text.PURIFIED_ADVICE}."
        level = text.purified_level(verdict)
    for waiver in verdict.policy.waivers_expired:
        message += f" Waiver {text.one_line(waiver.id, 64)} expired on {text.one_line(waiver.expires, 20)}."
    return [Finding(RULE_BY_NAME["backdoor-evidence"], level, message, waivers=verdict.policy.waivers_applied)]


def _purification(verdict: Verdict) -> list[Finding]:
    purification = verdict.purification
    if purification is None or purification.bars_met:
        return []
    misses = "; ".join(text.one_line(m, NAME_LIMIT) for m in purification.misses[:20]) or "no detail recorded"
    return [Finding(RULE_BY_NAME["purification-missed-bars"], "error",
                    f"The purified classifier misses the policy's bars: {misses}.")]


def _steps(verdict: Verdict) -> list[Finding]:
    rule = RULE_BY_NAME["step-incomplete"]
    found = []
    for name, state, reason, required in text.incomplete_steps(verdict):
        level = "error" if state == "failed" or required else "warning"
        words = f"Step {_quote(name)} {state}" + (" (required by the policy)" if required else "")
        if reason:
            words += f": {text.one_line(reason, NAME_LIMIT * 2)}"
        found.append(Finding(rule, level, words + ".", key=text.one_line(name, NAME_LIMIT)))
    detection = verdict.detection
    if not found and detection is None and not verdict.checkpoint.unsafe_findings:
        found.append(Finding(rule, "error", "Detection did not run, so the run cannot vouch for the checkpoint.",
                             key="detection"))
    elif not found and detection is not None and detection.outcome == Outcome.INCONCLUSIVE:
        why = f" ({text.one_line(detection.uncalibrated, NAME_LIMIT * 4)})" if detection.uncalibrated else ""
        found.append(Finding(rule, "error", f"Detection was inconclusive{why}, so the run cannot vouch for the "
                             "checkpoint.", key="detection"))
    return found


LEVEL_ORDER = ("error", "warning", "note", "none")


def findings(verdict: Verdict) -> list[Finding]:
    """Every finding of ``verdict``: errors first, then by kind; each message at most MESSAGE_LIMIT characters."""
    found = _unsafe(verdict) + _backdoor(verdict) + _purification(verdict) + _steps(verdict)
    found.sort(key=lambda f: LEVEL_ORDER.index(f.level))  # stable: the kind order stays within a level
    return [dataclasses.replace(f, message=text.one_line(f.message, MESSAGE_LIMIT)) for f in found]
