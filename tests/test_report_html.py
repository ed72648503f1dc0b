"""The HTML report: self-contained, complete for every kind of run, and strict about what it embeds."""

from __future__ import annotations

import base64
import datetime as dt
import html.parser
import re
import shutil
import subprocess
import sys

import markupsafe
import pytest
import verdict_samples as samples

from cbpt_guard.errors import CbptError, UsageError
from cbpt_guard.report import REPORT_FILES, locate, render, write_reports
from cbpt_guard.report.images import safe_png_data_uri


class _Page(html.parser.HTMLParser):
    """Collects every tag with its attributes, and the page's visible text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def assert_self_contained(page: str) -> None:
    """No script, no event handler, no URL other than a validated PNG data URI (or the empty data: icon)."""
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "iframe", "object", "embed", "base", "form"), tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
                assert value == "data:," if (tag, name) == ("link", "href") else safe_png_data_uri(value), (tag, value)
    assert "url(" not in page and "@import" not in page


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_renders_a_self_contained_page(name):
    page = render(samples.ALL[name](), "html")
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert_self_contained(page)


def test_the_decision_comes_first_and_is_coloured_by_action():
    page = render(samples.blocked_unsafe(), "html")
    assert page.index('class="decision block"') < page.index('id="checkpoint"')
    assert ">BLOCK</div>" in page
    assert 'class="decision pass"' in render(samples.clean_pass(), "html")
    assert 'class="decision inconclusive"' in render(samples.inconclusive_skipped(), "html")


def test_backdoored_report_pictures_the_inverted_trigger_and_draws_every_plot():
    verdict = samples.backdoored_purified()
    page = render(verdict, "html")
    parsed = parse(page)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    expected = [uri for family in verdict.detection.families for uri in family.images.values()]
    assert sorted(images) == sorted(expected)
    labels = [attrs.get("aria-label", "") for tag, attrs in parsed.tags if tag == "svg"]
    assert any(label.startswith("Backdoor score 0.999999 against 6 clean reference scores") for label in labels)
    assert sum(label.startswith("Stamped probes per class") for label in labels) == 3
    assert any(label.startswith("Purification loss curves: total, clean, backdoor, drift") for label in labels)
    assert any("ASR, patch → digit seven (suspected target) 99.4% to 0.8%" in label for label in labels)
    assert any(label.startswith("Seconds per stage") for label in labels)
    assert "digit seven" in page and "CPUExecutionProvider" in page and "2.4e-06" in page


def test_a_dummy_held_to_its_own_rate_shows_that_bar_and_why():
    page = render(samples.purified_natural_attractor(), "html")
    assert "max 8.5%" in page and "max 2.0%" in page
    assert "warp: held to its rate before purification: no backdoor evidence" in page
    assert "held to its rate before" not in render(samples.backdoored_purified(), "html")


def test_missing_stages_read_not_run_instead_of_crashing():
    page = render(samples.blocked_unsafe(), "html")
    text = " ".join(" ".join(parse(page).text).split())
    for stage in ("Data gathering: not run (skipped: the checkpoint was not loaded).",
                  "Detection: not run (skipped: the checkpoint was not loaded).",
                  "Purification: not run (skipped: the checkpoint was not loaded).",
                  "Export: not run (skipped: the checkpoint was not loaded)."):
        assert stage in text
    assert "os.system" in text and "builtins.exec" in text


def test_waivers_applied_and_expired_are_shown_with_their_reasons():
    text = " ".join(parse(render(samples.waived(), "html")).text)
    assert "W-2025-014" in text and "False positive on the checkerboard texture class" in text
    assert "Waivers expired" in text and "W-2024-101" in text and "active again" in text


def test_warn_mode_says_what_enforce_would_have_done():
    text = " ".join(parse(render(samples.warn_mode(), "html")).text)
    assert "In enforce mode the gate would PURIFY this checkpoint." in " ".join(text.split())


def test_skipped_and_failed_steps_are_listed_with_their_reasons():
    text = " ".join(" ".join(parse(render(samples.inconclusive_skipped(), "html")).text).split())
    assert "detection.warp" in text and "time budget exhausted after 120 steps" in text
    assert "The run was incomplete, so it fails closed" in text


def test_ten_thousand_classes_are_counted_not_all_listed():
    page = render(samples.many_classes(), "html")
    assert "… and 8,000 more not listed." in page
    assert "9,976 other classes" in page  # the histogram draws the 24 busiest classes and sums the rest


def _png(payload: bytes = b"") -> str:
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + payload).decode()


@pytest.mark.parametrize("uri", [
    "javascript:alert(1)",
    "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
    "data:image/png;base64,not base64!",
    "data:image/png;base64,",
    "data:image/png;base64,iVBORw0KGgo",  # bad padding
    "data:image/png;base64,R0lGODlhAQABAAAAACw=",  # a GIF
    "DATA:image/png;base64," + _png()[22:],
    "http://evil.example/x.png",
    " " + _png(),
    _png() + '" onerror="alert(1)',
    None,
    42,
])
def test_anything_but_a_base64_png_data_uri_is_refused(uri):
    assert safe_png_data_uri(uri) is None


def test_a_real_png_data_uri_is_kept_and_an_oversized_one_is_not():
    assert safe_png_data_uri(_png(b"rest")) == _png(b"rest")
    assert safe_png_data_uri(samples.patch_images()["mask"]) is not None
    assert safe_png_data_uri(_png(b"x" * 3_100_000)) is None


def test_refused_images_are_left_out_and_named():
    page = render(samples.hostile(), "html")
    assert "Left out, not a valid PNG data URI: mask, pattern, clean, stamped" in page
    sources = [attrs["src"] for tag, attrs in parse(page).tags if tag == "img"]
    assert sources and all(safe_png_data_uri(src) == src for src in sources)
    assert "data:image/svg" not in page


def test_unknown_format_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown report format 'pdf'"):
        render(samples.clean_pass(), "pdf")


def test_write_reports_writes_the_four_files_each_equal_to_its_render(tmp_path):
    verdict = samples.backdoored_purified()
    written = write_reports(verdict, tmp_path / "out")
    assert written == REPORT_FILES
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES.values())
    formats = {"verdict": "json", "html": "html", "markdown": "md", "sarif": "sarif"}
    for role, name in written.items():
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == render(verdict, formats[role])


def test_templates_are_found_under_the_install_prefix_when_not_beside_the_package(tmp_path, monkeypatch):
    installed = tmp_path.joinpath("prefix", *locate.SHARE_PARTS)
    shutil.copytree(locate.CHECKOUT_TEMPLATES, installed)
    monkeypatch.setattr(locate, "CHECKOUT_TEMPLATES", tmp_path / "no-checkout")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert locate.template_dir() == installed
    from cbpt_guard.report.html import render_html

    assert render_html(samples.clean_pass()) == render(samples.clean_pass(), "html")


def test_missing_templates_are_a_tool_error_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "template_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(CbptError, match="report templates are missing") as raised:
        locate.template_dir()
    assert str(tmp_path / "b") in str(raised.value) and "\n" not in str(raised.value)


def test_the_report_package_does_not_import_torch():
    code = ("import sys, cbpt_guard.report as r, cbpt_guard.report.html, cbpt_guard.report.markdown, "
            "cbpt_guard.report.sarif, cbpt_guard.report.schema, cbpt_guard.cli.report_cmd; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_a_verdict_read_back_from_json_renders_byte_for_byte_the_same(name):
    from cbpt_guard.verdict import Verdict

    verdict = samples.ALL[name]()
    again = Verdict.from_json(verdict.to_json())
    for fmt in ("html", "md", "sarif", "json"):
        assert render(again, fmt) == render(verdict, fmt), fmt


# --- what the outcome looks like: purified is not a plain pass, clean is not an alarm ----------------------

def _section(page: str, element_id: str) -> str:
    """The HTML of the element whose id is ``element_id``, up to the next section's start."""
    start = page.index(f'id="{element_id}"')
    end = page.find("<section", start)
    return page[start:end if end >= 0 else len(page)]


def _chart(page: str, label: str) -> str:
    """The SVG whose aria-label starts with ``label``."""
    start = page.index(f'aria-label="{label}')
    return page[start:page.index("</svg>", start)]


def test_a_purified_pass_is_amber_and_says_to_deploy_the_purified_classifier():
    page = render(samples.backdoored_purified(), "html")
    decision = _section(page, "decision")
    assert '<header class="top purified">' in page and '<section class="decision purified"' in page
    assert '<div class="verdict-word">PURIFIED</div>' in decision and ">PASS<" not in decision
    assert "Deploy the purified classifier, not the original weights." in decision
    assert "<code>purified/classifier.onnx</code>" in decision  # which file to deploy, where it is read first
    css = page.split("<style>")[1].split("</style>")[0]
    assert "header.top.purified { background: var(--purified); }" in css and "--purified: #b35900" in css


def test_clean_pass_purified_and_block_differ_in_banner_colour_word_and_icon():
    looks = {}
    for sample in (samples.clean_pass, samples.backdoored_purified, samples.purification_missed):
        page = render(sample(), "html")
        header = page.split('<header class="top ')[1].split('"')[0]
        word = page.split('<div class="verdict-word">')[1].split("<")[0]
        icon = page.split('<div class="verdict-icon" aria-hidden="true">')[1].split("<")[0]
        looks[sample.__name__] = (header, word, icon)
    assert looks == {"clean_pass": ("pass", "PASS", "✔"), "backdoored_purified": ("purified", "PURIFIED", "◐"),
                     "purification_missed": ("block", "BLOCK", "✖")}


def test_families_of_a_clean_model_that_collapse_carry_no_alarm_badge():
    verdict = samples.clean_pass()
    assert all(f.collapsed for f in verdict.detection.families)  # as on a real clean model of the zoo
    detection = _section(render(verdict, "html"), "detection")
    assert 'class="badge found"' not in detection and 'class="family alarm"' not in detection
    assert detection.count("collapsed to one class, not evidence") == 3
    assert 'fill="#cf222e" fill-opacity="1"' not in detection  # no red bar in the histograms either


def test_only_the_family_that_is_the_backdoor_evidence_is_an_alarm():
    detection = _section(render(samples.backdoored_purified(), "html"), "detection")
    assert detection.count('class="family alarm"') == 1
    assert detection.count("backdoor evidence: collapsed to one class") == 1


def test_the_loss_chart_is_scaled_to_training_not_to_the_first_steps_spike():
    verdict = samples.backdoored_purified()
    curves = {name: (40.0 * (name == "total") + values[0],) + values[1:]
              for name, values in verdict.purification.curves.items()}
    purification = verdict.purification.model_copy(update={"curves": curves})
    page = render(verdict.model_copy(update={"purification": purification}), "html")
    chart = _chart(page, "Purification loss curves")
    ticks = [float(t) for t in re.findall(r'text-anchor="end" fill="#57606a" font-size="12">([-0-9.e]+)</text>',
                                          chart)]
    assert ticks and max(ticks) < 10 < 40  # the axis ends near the later losses, not at the 43-odd spike
    assert "first steps clipped at the top: they reach 43.9" in chart
    ordinary = _chart(render(samples.backdoored_purified(), "html"), "Purification loss curves")
    assert "clipped" not in ordinary  # a start within twice the later losses stays on the axis


def test_the_asr_row_that_misses_its_bar_is_coloured():
    page = render(samples.purification_missed(), "html")
    section = _section(page, "purification")
    row = next(r for r in section.split("<tr") if "ASR, patch" in r)
    assert row.startswith(' class="problem failed"')
    chart = _chart(section, "Before and after purification")
    assert 'fill="#cf222e" fill-opacity="0.08"><title>ASR, patch → digit seven (suspected target): misses the bar' \
        in chart
    passing = _section(render(samples.backdoored_purified(), "html"), "purification")
    assert 'class="problem failed"' not in passing and 'fill-opacity="0.08"' not in passing


def test_the_threshold_is_written_one_way_in_every_format():
    from cbpt_guard.cli.check_cmd import format_verdict
    from cbpt_guard.decide import DecisionInput, DetectionOutcome, decide
    from cbpt_guard.detect.outcome import Outcome
    from cbpt_guard.github.outcome import CheckpointOutcome
    from cbpt_guard.github.summary import table
    from cbpt_guard.policy import DataTier, resolve_policy

    verdict = samples.backdoored_purified()
    threshold = verdict.detection.threshold  # 0.99865...
    outcome = DetectionOutcome(result=Outcome.FOUND, score=verdict.detection.score, threshold=threshold,
                               target_class="digit seven")
    reasons = decide(DecisionInput(checkpoint_digest="ab" * 32, data_tier=DataTier.ZERO_DATA, detection=outcome),
                     resolve_policy("strict").policy, today=dt.date(2026, 1, 1)).reasons
    shown = {"reason": reasons[0], "html": render(verdict, "html"), "markdown": render(verdict, "md"),
             "sarif": render(verdict, "sarif"), "terminal": format_verdict(verdict),
             "pull request": table([CheckpointOutcome("models/x", "out", verdict=verdict)])}
    for where, content in shown.items():
        assert "0.998650" in content, where
        for other in ("threshold 1.00", "threshold 0.999 ", "threshold 0.999)", "/ 0.999 ", "threshold 0.9987"):
            assert other not in content, (where, other)


def test_jargon_carries_a_plain_tooltip_and_the_page_a_glossary():
    from cbpt_guard.report.text import GLOSSARY

    page = render(samples.backdoored_purified(), "html")
    for word in ("z", "ASR", "threshold", "backdoor score", "trigger family", "re-check"):
        assert f'title="{markupsafe.escape(GLOSSARY[word])}"' in page, word
    glossary = _section(page, "glossary")
    assert glossary.count("<dt>") == len(GLOSSARY)


def test_the_recheck_is_worded_without_jargon():
    from types import SimpleNamespace

    from cbpt_guard.purify.verify import recheck_wording

    wording = recheck_wording(SimpleNamespace(outcome="no evidence", skipped=()),
                              SimpleNamespace(target="cross", strongest=("patch", "circle", 5.724)), found=False)
    assert wording == "no evidence toward 'cross' (strongest remaining pull: patch trigger -> 'circle', z 5.72)"
    assert "classifier-level" not in wording
