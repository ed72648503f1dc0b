"""Untrusted text (class names, paths, manifest fields, reasons, waivers) comes out inert in every format.

The hostile Verdict of ``verdict_samples.hostile`` puts script tags, quotes,
``javascript:`` URLs, Markdown links and emphasis, backticks, pipes, mentions,
issue references, newlines and bidi overrides into every string field a
checkpoint or a policy file can control. Each format must show them as text.
"""

from __future__ import annotations

import html
import html.parser
import json

import pytest
import verdict_samples as samples
from markdown_it import MarkdownIt

from cbpt_guard.report import render
from cbpt_guard.report.images import safe_png_data_uri
from cbpt_guard.report.text import one_line

ZWSP = "\u200b"


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def collect(markup: str) -> _Collector:
    collector = _Collector()
    collector.feed(markup)
    collector.close()
    return collector


@pytest.fixture(scope="module")
def hostile():
    return samples.hostile()


def test_html_shows_hostile_text_as_text_and_runs_nothing(hostile):
    page = render(hostile, "html")
    parsed = collect(page)
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert [t for t, _ in parsed.tags if t in ("script", "iframe", "object", "embed", "base", "a", "form")] == []
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if "src" in attrs:
            assert safe_png_data_uri(attrs["src"]) == attrs["src"]
    visible = "".join(parsed.text)
    for raw in samples.HOSTILE[:6]:
        assert raw in visible  # displayed literally, so the browser parsed it as text
    assert "\u202e" not in page  # a bidi override cannot reorder what the reviewer reads


def test_hostile_class_names_in_charts_are_escaped(hostile):
    page = render(hostile, "html")
    svg = page[page.index('aria-label="Stamped probes per class'):]
    svg = svg[: svg.index("</svg>")]
    assert "<script" not in svg and "&lt;script&gt;" in svg


def test_markdown_renders_hostile_text_literally_with_no_links_mentions_or_markup(hostile):
    summary = render(hostile, "md")
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(summary)
    parsed = collect(rendered)
    tags = [tag for tag, _ in parsed.tags]
    assert not set(tags) & {"a", "img", "script", "iframe", "del", "h1"}
    assert tags.count("h2") == 1 and "<details open" not in rendered
    visible = "".join(parsed.text).replace(ZWSP, "")
    for raw in samples.HOSTILE:
        assert f"reason with {one_line(raw, 400)}" in visible, raw
    # '**bold** _em_ ~~del~~ `tick`' kept its markers, so no emphasis, strikethrough or code was applied.
    assert "**bold** _em_ ~~del~~ `tick` | pipe |" in visible


def test_markdown_breaks_mentions_issue_references_and_autolinks(hostile):
    summary = render(hostile, "md")
    assert "@mention" not in summary and "\\@" + ZWSP + "mention" in summary
    assert "#1" not in summary and "repo#2" not in summary
    assert "https://" not in summary and "www.evil" not in summary and "javascript:" not in summary


def test_sarif_messages_cannot_form_embedded_links_and_the_file_holds_no_markup(hostile):
    text = render(hostile, "sarif")
    assert "<" not in text and ">" not in text and "&" not in text
    log = json.loads(text)
    messages = [r["message"]["text"] for r in log["runs"][0]["results"]]
    messages += [s["justification"] for r in log["runs"][0]["results"] for s in r.get("suppressions", [])]
    for message in messages:
        stripped = message.replace("\\\\", "").replace("\\[", "").replace("\\]", "")
        assert "[" not in stripped and "]" not in stripped, message
    decoded = " ".join(m.replace("\\[", "[").replace("\\]", "]") for m in messages)
    assert "[x](javascript:alert(1))" in decoded and "<script>alert('x')</script>" in decoded
