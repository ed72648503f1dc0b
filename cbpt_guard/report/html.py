"""The HTML report: one self-contained page rendered from a Verdict with Jinja.

Autoescape is on and undefined names raise (StrictUndefined), so a missing
field is a bug found in tests, not a blank in a report. The page loads nothing:
CSS is inline, pictures are validated PNG data URIs, charts are inline SVG
built by :mod:`cbpt_guard.report.plots`, and a Content-Security-Policy forbids
scripts and every network fetch even if something slipped through.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jinja2
from markupsafe import Markup

from cbpt_guard.report import images, plots, text
from cbpt_guard.report.findings import Finding, findings
from cbpt_guard.report.locate import MAIN_TEMPLATE, template_dir
from cbpt_guard.verdict import FamilyEvidence, Verdict

MAX_CLASSES_LISTED = 2000
"""Class names listed in the checkpoint section; the rest are counted."""
MAX_LIST_ITEMS = 500
"""Rows of any other untrusted list (files, probe files skipped, reasons)."""


def _finalize(value: object) -> object:
    """Every ``{{ }}`` value before escaping: untrusted text loses bidi and control characters (Markup is ours)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return text.strip_invisible(value)
    return value


@functools.lru_cache(maxsize=4)
def _environment(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(pct=text.pct, num=text.num, score=text.score, sci=text.sci, thousands=text.count,
                       bytes=text.size_bytes, seconds=text.seconds, short=text.short_digest, line=text.one_line)
    env.globals["glossary"] = text.GLOSSARY  # the macros' tooltips read it without the page's context
    return env


def environment(folder: Path | None = None) -> jinja2.Environment:
    """The Jinja environment of the report templates (cached per folder)."""
    return _environment(str(folder or template_dir()))


@dataclasses.dataclass(frozen=True)
class FamilyView:
    """One trigger family as the page shows it: the evidence, its pictures and its histogram."""

    evidence: FamilyEvidence
    pictures: list[images.Picture]
    dropped: list[str]
    histogram: Markup | None
    alarm: bool
    """Whether this family is backdoor evidence (:func:`cbpt_guard.report.text.family_is_evidence`). On a
    clean model families collapse too (onto the small model's natural attractors); that is shown, but not
    as an alarm."""


def _families(verdict: Verdict) -> list[FamilyView]:
    if verdict.detection is None:
        return []
    views = []
    for evidence in verdict.detection.families:
        alarm = text.family_is_evidence(verdict.detection, evidence)
        pictures, dropped = images.family_pictures(evidence)
        chart = plots.class_histogram(verdict.checkpoint.classes, evidence.histogram, evidence.target,
                                      highlight=plots.RED if alarm else plots.INK)
        views.append(FamilyView(evidence, pictures, dropped, chart, alarm))
    return views


def _comparisons(verdict: Verdict) -> list[plots.Comparison]:
    purification = verdict.purification
    if purification is None:
        return []
    before, after = purification.before, purification.after
    max_drop = purification.bars.get("max_ca_drop")
    floor = (before.clean_accuracy - max_drop
             if text.finite(before.clean_accuracy) and text.finite(max_drop) else None)
    ca_missed = floor is not None and text.finite(after.clean_accuracy) and after.clean_accuracy < floor
    rows = [plots.Comparison("clean accuracy", before.clean_accuracy, after.clean_accuracy, floor,
                             f"min {text.pct(floor)}" if floor is not None else "", failed=ca_missed),
            plots.Comparison("agreement with original", before.agreement, after.agreement)]
    rows += [plots.Comparison(f"ASR, {row.label()}", row.before, row.after, row.bar,
                              f"max {text.pct(row.bar)}" if text.finite(row.bar) else "",
                              failed=text.finite(row.bar) and text.finite(row.after) and row.after > row.bar)
             for row in text.dummy_asr_rows(verdict)]
    return rows


def _charts(verdict: Verdict) -> dict[str, Markup | None]:
    detection, purification = verdict.detection, verdict.purification
    return {
        "score": (plots.score_strip(detection.calibration_scores, detection.threshold, detection.score)
                  if detection is not None else None),
        "before_after": plots.before_after(_comparisons(verdict)),
        "curves": plots.loss_curves(purification.curves) if purification is not None else None,
        "timings": plots.timing_bars([(k, v) for k, v in text.ordered_timings(verdict) if k != "total"]),
    }


def context(verdict: Verdict) -> dict:
    """Everything the template reads: the Verdict itself and what is derived from it (charts, pictures, lists)."""
    classes = verdict.checkpoint.classes
    found: list[Finding] = findings(verdict)
    return {
        "v": verdict,
        "headline": text.headline(verdict),
        "reference_free": text.reference_free(verdict.detection) if verdict.detection is not None else None,
        "action_word": text.ACTION_WORDS[verdict.decision.action],
        "enforced_word": text.ACTION_WORDS[verdict.decision.enforced],
        "findings": found,
        "classes_shown": classes[:MAX_CLASSES_LISTED],
        "classes_more": max(len(classes) - MAX_CLASSES_LISTED, 0),
        "list_limit": MAX_LIST_ITEMS,
        "families": _families(verdict),
        "charts": _charts(verdict),
        "comparisons": _comparisons(verdict),
        "own_rate_families": text.own_rate_families(verdict),
        "own_rate_note": text.OWN_RATE_NOTE,
        "incomplete": text.incomplete_steps(verdict),
        "step_notes": text.step_notes(verdict),
        "settings_json": json.dumps(verdict.policy.settings, indent=2, sort_keys=True, ensure_ascii=False,
                                    default=str),
        "features": sorted(verdict.detection.features.items()) if verdict.detection is not None else [],
        "budget_json": (json.dumps(verdict.detection.budget, sort_keys=True, ensure_ascii=False, default=str)
                        if verdict.detection is not None else ""),
        "purification_settings_json": (json.dumps(verdict.purification.settings, sort_keys=True,
                                                  ensure_ascii=False, default=str)
                                       if verdict.purification is not None else ""),
    }


def render_html(verdict: Verdict, *, folder: Path | None = None) -> str:
    """The report page for ``verdict`` as one self-contained HTML document."""
    return environment(folder).get_template(MAIN_TEMPLATE).render(context(verdict))
