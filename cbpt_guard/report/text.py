"""Plain-text helpers every report format shares: numbers as people read them, untrusted text made one line.

Everything here is pure and format-neutral. Escaping for a particular output
(HTML, Markdown, SARIF) is the renderer's job; these functions only make
values short, single-line and consistently worded, so the formats agree.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from cbpt_guard.detect.domain import UNCALIBRATED
from cbpt_guard.detect.outcome import Outcome, z_to_score
from cbpt_guard.figures import score_text
from cbpt_guard.verdict import PURIFIED_ADVICE, DetectionInfo, FamilyEvidence, Verdict  # noqa: F401 - re-exported

NOT_RUN = "not run"

ACTION_WORDS = {"pass": "PASS", "purified": "PURIFIED", "purify": "PURIFY", "inconclusive": "INCONCLUSIVE",
                "block": "BLOCK"}
"""The decision's action as the headline shows it."""

# C0 and C1 control characters, and every Unicode line or paragraph separator:
# none of them may reach a table cell or a one-line message.
_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Bidirectional overrides and isolates could make a class name display as something else.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def one_line(value: object, limit: int | None = None) -> str:
    """``value`` as a single line: control characters and line breaks become spaces, bidi controls go.

    With ``limit``, text longer than ``limit`` characters is cut and ends with "…",
    so one hostile class name cannot blow up a report.
    """
    text = _BIDI.sub("", _BREAKING.sub(" ", str(value))).strip()
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "…"
    return text


_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def strip_invisible(value: str) -> str:
    """``value`` without bidi controls and control characters (newlines and tabs kept), for multi-line output."""
    return _INVISIBLE.sub("", value)


def finite(value: float | None) -> bool:
    """Whether ``value`` is a real, finite number (a report never draws NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (``0.0312`` -> ``3.1%``); "n/a" when missing or not finite."""
    if not finite(value):
        return "n/a"
    return f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "n/a" when missing or not finite."""
    if not finite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def score(value: float | None) -> str:
    """A backdoor score or threshold, written as everywhere else (:func:`cbpt_guard.figures.score_text`)."""
    return score_text(value)


def sci(value: float | None) -> str:
    """A small quantity (a logit difference, a tolerance) in scientific notation: ``2.4e-06``."""
    if not finite(value):
        return "n/a"
    return "0" if value == 0 else f"{value:.2g}" if 1e-3 <= abs(value) < 1e3 else f"{value:.1e}"


def count(value: int | None) -> str:
    """An integer with thousands separators; "n/a" when missing."""
    return "n/a" if value is None else f"{value:,}"


def size_bytes(value: int | None) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def seconds(value: float | None) -> str:
    """A duration: ``0.42 s``, ``12.3 s``, ``4 min 05 s``."""
    if not finite(value):
        return "n/a"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(round(value)), 60)
    return f"{minutes} min {rest:02d} s"


def short_digest(digest: str | None, keep: int = 12) -> str:
    """The first ``keep`` characters of a digest, for tables; the full digest is shown elsewhere."""
    if not digest:
        return "n/a"
    text = one_line(digest)
    return text if len(text) <= keep else text[:keep] + "…"


def family_is_evidence(detection: DetectionInfo, family: FamilyEvidence) -> bool:
    """Whether a trigger family is backdoor evidence, and so shown as an alarm.

    In a run that found evidence: the family collapsed onto the suspected
    target, or its own z clears the threshold (a second backdoor). Small clean
    models collapse too, onto classes they are drawn to anyway; such a family
    is reported, but it is no alarm (the score already compared it with clean models).
    """
    if detection.outcome != Outcome.FOUND or not family.collapsed:
        return False
    own = finite(family.z) and finite(detection.threshold) and z_to_score(family.z) >= detection.threshold
    return family.target == detection.suspected_target or own


PURIFIED_LEVELS = ("error", "warning", "note")


def purified_level(verdict: Verdict) -> str:
    """The level the policy reports a purified checkpoint's backdoor finding at (``decision.purified_level``).

    A Verdict written before the policy had the setting, or one holding something else, gets "warning".
    """
    level = setting(verdict.policy.settings, "decision", "purified_level", default="warning")
    return level if level in PURIFIED_LEVELS else "warning"


GLOSSARY: dict[str, str] = {
    "backdoor score": "How unusual this checkpoint's evidence is next to clean models of its family, from 0 to 1. "
                      "At or above the threshold it counts as backdoor evidence.",
    "reference-free score": "A second score from this model alone, no clean references needed: how much more "
                            "specifically a small pattern reaches one class than random patterns of its size do, "
                            "next to the model's other classes. It decides for a model outside its calibration's "
                            "family; 0.5 or more toward a class that is not a natural attractor is evidence.",
    "threshold": "The score the policy counts as evidence, set so that the clean reference models stay below it "
                 "(a calibration) or fixed by the policy.",
    "calibration": "The clean reference models whose scores define what normal looks like, and the threshold "
                   "derived from them.",
    "trigger family": "A kind of trigger a backdoor may use: a patch stamped on the image, a faint pattern added "
                      "to it (additive), or a slight warp of the image.",
    "trigger inversion": "Searching for a small change to images that sends them to one class, without labels. "
                         "A backdoored model has such a change (its trigger); a clean one needs a larger change.",
    "collapsed to one class": "The inverted trigger sends most stamped images to a single class. On a backdoored "
                              "model that is the backdoor's target; small clean models also collapse onto classes "
                              "they are drawn to anyway, which is why the score compares with clean models.",
    "concentration": "The share of stamped images that land on the trigger's target class.",
    "z": "How many spreads of the clean reference models a measurement lies above their average; "
         "around 0 is ordinary, several is unusual.",
    "dummy trigger": "A trigger recovered by inversion, used to purify and then to test the purified classifier.",
    "ASR": "Attack success rate: the share of images not of the target class that a trigger sends to it.",
    "CA": "Clean accuracy: the share of ordinary, untriggered images classified correctly.",
    "purification": "Re-learning the class prompts (class-wise prompt tuning) so triggered images are no longer "
                    "sent to the target, while clean images keep their predictions. The model's weights are not "
                    "changed: the purified classifier is those weights with the new prompts.",
    "re-check": "Detection run again against the purified classifier; its strongest remaining pull is the class "
                "the inverted triggers still send images to most, with its z.",
    "parity": "The exported ONNX classifier gives the same outputs as the PyTorch one, within the tolerance.",
}
"""Plain meanings of the words the reports use, for the HTML report's glossary and tooltips."""


def reference_free(detection: DetectionInfo) -> str | None:
    """``reference-free score 0.71 (toward 'cat', conclusive)``, the same in every format; None when not measured."""
    free = detection.reference_free
    if free is None:
        return None
    if free.score is None:
        return f"reference-free score: none ({one_line(free.note, 200)})"
    verdict = "conclusive" if free.found else f"not conclusive, bar {free.found_at:.2f}"
    return f"reference-free score {free.score:.2f} (toward {one_line(free.target or '', 80)!r}, {verdict})"


def headline(verdict: Verdict) -> str:
    """One sentence that says what the run found, built only from the Verdict (the same in every format).

    The decision itself is not repeated: every format shows it beside this sentence.
    """
    parts = []
    if verdict.checkpoint.unsafe_findings:
        parts.append("unsafe serialisation found")
    detection = verdict.detection
    if detection is not None and detection.uncalibrated:
        parts.append(UNCALIBRATED)  # every format's headline: the score beside it is not this family's
    if detection is None:
        parts.append("detection did not run")
    elif detection.outcome == Outcome.INCONCLUSIVE:
        parts.append("detection was inconclusive")
    else:
        text = one_line(detection.outcome, 80)
        if detection.suspected_target is not None:
            text += f" (suspected target class: {one_line(detection.suspected_target, 80)})"
        parts.append(text)
    if detection is not None and detection.outcome == Outcome.FOUND and verdict.policy.waivers_applied:
        waivers = ", ".join(one_line(w.id, 64) for w in verdict.policy.waivers_applied)
        parts.append(f"the finding is waived by {waivers}")
    purification = verdict.purification
    if purification is not None:
        parts.append("purified and verified" if purification.bars_met else "purification missed the bars")
    incomplete = len(incomplete_steps(verdict))
    if incomplete:
        parts.append(f"{incomplete:,} step{'s' if incomplete != 1 else ''} skipped or failed")
    sentence = "; ".join(parts)
    return sentence[:1].upper() + sentence[1:] + "."


class DummyRow(NamedTuple):
    """One dummy trigger's success rate before and after purification, and where it draws images."""

    family: str
    target: str | None
    """The class the inverted trigger sent probes to; None when detection is not in the verdict."""
    before: float | None
    after: float | None
    suspected: bool
    """Whether that class is detection's suspected target: the dummy that stands for the backdoor."""
    bar: float | None = None
    """The ASR bar verification held this dummy to (see ``PurificationInfo.dummy_bars``)."""

    def label(self, limit: int = 40) -> str:
        """E.g. "patch → cross (suspected target)" or "warp → square (another class)"."""
        if self.target is None:
            return one_line(self.family, limit)
        which = "suspected target" if self.suspected else "another class"
        return f"{one_line(self.family, 20)} → {one_line(self.target, limit)} ({which})"


def dummy_asr_rows(verdict: Verdict) -> list[DummyRow]:
    """Every family either side measured, sorted by family, with the class its dummy draws to.

    A dummy trigger can pull toward a class other than the suspected target
    (small models have natural attractors). The label tells a reader which row
    is the backdoor's, and ``bar`` what verification held it to: ``max_asr``,
    or its own rate before under the policy's ``dummies: evidence`` (a Verdict
    written before per-dummy bars were recorded holds every dummy to ``max_asr``).
    """
    purification = verdict.purification
    if purification is None:
        return []
    detection = verdict.detection
    targets = {f.family: f.target for f in detection.families} if detection is not None else {}
    suspected = detection.suspected_target if detection is not None else None
    families = sorted(set(purification.before.dummy_asr) | set(purification.after.dummy_asr))
    max_asr = purification.bars.get("max_asr")
    return [DummyRow(family, targets.get(family), purification.before.dummy_asr.get(family),
                     purification.after.dummy_asr.get(family), family in targets and targets[family] == suspected,
                     purification.dummy_bars.get(family, max_asr))
            for family in families]


OWN_RATE_NOTE = ("held to its rate before purification: no backdoor evidence (a natural attractor), "
                 "under the policy's dummies: evidence")
"""Why a dummy's bar is above ``max_asr``; the reports print it beside the families it applies to."""


def own_rate_families(verdict: Verdict) -> list[str]:
    """The dummy families whose recorded bar is above ``max_asr`` (see :data:`OWN_RATE_NOTE`), sorted."""
    purification = verdict.purification
    if purification is None or not finite(purification.bars.get("max_asr")):
        return []
    max_asr = purification.bars["max_asr"]
    return sorted(family for family, bar in purification.dummy_bars.items() if bar > max_asr)


def incomplete_steps(verdict: Verdict) -> list[tuple[str, str, str, bool]]:
    """(name, state, reason, required) of every step skipped or failed, then detection's own skips.

    Detection's skipped entries (a family whose budget ran out) are listed only
    when the steps do not already name them, so nothing is reported twice.
    """
    rows = [(s.name, s.state, s.reason, s.required) for s in verdict.steps if s.state in ("skipped", "failed")]
    named = {s.name for s in verdict.steps}
    if verdict.detection is not None:
        rows += [(name, "skipped", reason, False) for name, reason in verdict.detection.skipped if name not in named]
    return rows


def setting(settings: object, *keys: str, default: object = None) -> object:
    """A value deep in the policy's settings (plain JSON); ``default`` where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(settings, dict) or key not in settings:
            return default
        settings = settings[key]
    return settings


def ordered_timings(verdict: Verdict) -> list[tuple[str, float]]:
    """Seconds per stage in the order the steps ran (then any other stage by name).

    The saved JSON sorts keys, so the order of ``timings`` itself does not
    survive a round trip; the steps' order does, and every format uses it.
    """
    order = {step.name: i for i, step in enumerate(verdict.steps)}
    return sorted(verdict.timings.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


CURVE_ORDER = ("total", "clean", "backdoor", "drift", "distill")


def ordered_curves(curves: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
    """Loss curves in a fixed order (total, clean, backdoor, drift, distill, then others by name), any dict order."""
    rank = {name: i for i, name in enumerate(CURVE_ORDER)}
    return {name: curves[name] for name in sorted(curves, key=lambda n: (rank.get(n, len(rank)), n))}


def step_notes(verdict: Verdict) -> dict[str, str]:
    """Per step not done, why (``"not needed: only a model the policy passes is exported"``), for "not run" lines."""
    words = {"skipped": "skipped", "failed": "failed", "not-needed": "not needed"}
    return {step.name: words[step.state] + (f": {step.reason}" if step.reason else "")
            for step in verdict.steps if step.state in words}
