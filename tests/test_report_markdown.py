"""The Markdown summary: what a reviewer reads first in a PR, small enough for GitHub whatever the run."""

from __future__ import annotations

import pytest
import verdict_samples as samples
from markdown_it import MarkdownIt

from cbpt_guard.report import render
from cbpt_guard.report.markdown import MAX_BYTES, escape_markdown, render_markdown

GITHUB_COMMENT_LIMIT = 65_536


def to_html(markdown: str) -> str:
    """Markdown rendered as GitHub would parse it: CommonMark with tables and strikethrough, raw HTML allowed."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_has_a_summary_headed_by_its_decision(name):
    verdict = samples.ALL[name]()
    summary = render(verdict, "md")
    word = {"pass": "PASS", "purified": "PURIFIED", "block": "BLOCK", "inconclusive": "INCONCLUSIVE",
            "purify": "PURIFY"}
    assert summary.splitlines()[0].endswith(f"cbpt-guard: {word[verdict.decision.action]}")
    assert f"(exit {verdict.decision.exit_code}, mode" in summary


def test_summary_of_a_purified_model_shows_asr_and_accuracy_before_and_after():
    summary = render(samples.backdoored_purified(), "md")
    assert "suspected target **digit seven**" in summary
    assert "| ASR, patch → digit seven \\(suspected target\\) | 99.4% | 0.8% | ≤ 2.0% |" in summary
    assert "| clean accuracy | 72.4% | 71.9% | drop ≤ 2.0% |" in summary
    assert "parity passed" in summary


def test_a_dummy_trigger_toward_another_class_is_told_apart_from_the_backdoors():
    verdict = samples.backdoored_purified()
    purification = verdict.purification
    before = purification.before.model_copy(update={"dummy_asr": {"patch": 0.994, "warp": 0.075}})
    after = purification.after.model_copy(update={"dummy_asr": {"patch": 0.008, "warp": 0.056}})
    verdict = verdict.model_copy(update={"purification": purification.model_copy(update={"before": before,
                                                                                       "after": after})})
    summary = render(verdict, "md")
    assert "| ASR, patch → digit seven \\(suspected target\\) | 99.4% | 0.8% | ≤ 2.0% |" in summary
    assert "| ASR, warp → circle \\(another class\\) | 7.5% | 5.6% | ≤ 2.0% |" in summary


def test_a_dummy_held_to_its_own_rate_shows_that_bar_and_why():
    summary = render(samples.purified_natural_attractor(), "md")
    assert "| ASR, patch → digit seven \\(suspected target\\) | 99.4% | 0.8% | ≤ 2.0% |" in summary
    assert "| ASR, warp → circle \\(another class\\) | 7.5% | 5.6% | ≤ 8.5% |" in summary
    assert "warp: held to its rate before purification\\: no backdoor evidence" in summary
    assert "held to its rate before" not in render(samples.backdoored_purified(), "md")


def test_missing_stages_read_not_run():
    summary = render(samples.blocked_unsafe(), "md")
    assert "| Detection | not run (skipped\\: the checkpoint was not loaded) |" in summary
    assert "| Purification | not run (skipped\\: the checkpoint was not loaded) |" in summary
    assert "| Export | not run (skipped\\: the checkpoint was not loaded) |" in summary
    assert "| Export | not run |" in render(samples.ALL["warn-mode"]().model_copy(update={"steps": ()}), "md")
    assert "unsafe\\-serialisation" not in summary and "unsafe-serialisation: " in summary


def test_skipped_steps_and_waivers_are_listed():
    assert "time budget exhausted after 120 steps" in render(samples.inconclusive_skipped(), "md")
    waived = render(samples.waived(), "md")
    assert "- applied: W\\-2025\\-014" in waived and "**expired** on 2024\\-12\\-31: W\\-2024\\-101" in waived


def test_ten_thousand_long_class_names_stay_under_githubs_comment_limit():
    verdict = samples.many_classes(count=10_000, name_length=300)
    summary = render(verdict, "md")
    assert len(summary.encode("utf-8")) <= MAX_BYTES < GITHUB_COMMENT_LIMIT
    assert "more reasons not shown" in summary and "more steps not shown" in summary
    assert "| Model | ViT\\-T\\-4 \\(zoo vit\\), 2,201,857 parameters, 10,000 classes |" in summary


def test_a_tiny_budget_leaves_out_whole_sections_and_says_so():
    summary = render_markdown(samples.backdoored_purified(), max_bytes=1_800)
    assert len(summary.encode("utf-8")) <= 1_800
    assert "section(s) left out" in summary and "cbpt-guard: PURIFIED" in summary


def test_tables_keep_their_shape_whatever_the_cells_contain():
    html = to_html(render(samples.hostile(), "md"))
    first_table = html.split("</table>")[0]
    rows = first_table.split("<tr>")[1:]
    assert len(rows) == 1 + 8  # header and eight fact rows, no row added by a newline or a pipe
    assert all(row.count("<td>") + row.count("<th>") == 2 for row in rows)


@pytest.mark.parametrize("raw, escaped", [
    ("a|b", "a\\|b"),
    ("**x**", "\\*\\*x\\*\\*"),
    ("[x](y)", "\\[x\\]\\(y\\)"),
    ("`tick`", "\\`tick\\`"),
    ("<b>", "&lt;b&gt;"),
    ("say \"hi\" & 'bye'", "say &quot;hi&quot; &amp; &#39;bye&#39;"),
    ("@team", "\\@\u200bteam"),
    ("#12", "\\#\u200b12"),
    ("one\ntwo\r\nthree", "one two three"),
    ("\u202eevil", "evil"),
])
def test_escape_markdown_makes_control_characters_literal(raw, escaped):
    assert escape_markdown(raw) == escaped


def test_escape_markdown_cuts_long_text_before_escaping():
    assert escape_markdown("x" * 500, limit=10) == "x" * 9 + "…"


def test_a_purified_summary_is_headed_purified_and_says_what_to_deploy():
    summary = render(samples.backdoored_purified(), "md")
    lines = summary.splitlines()
    assert lines[0] == "## 🟡 cbpt-guard: PURIFIED"
    note = next(line for line in lines if line.startswith("> "))
    assert note.startswith("> **Deploy the purified classifier, not the original weights** (ONNX "
                           "<code>purified/classifier\\.onnx</code>, "
                           "prompts <code>purified/prompts\\.safetensors</code>)")
    assert lines.index(note) < lines.index("| | |")  # before the facts table, right under the headline
    assert "✅" not in summary.split("### Findings")[0]


def test_a_clean_summary_marks_no_family_as_an_alarm():
    clean = render(samples.clean_pass(), "md")
    families = clean.split("### Trigger families")[1].split("###")[0]
    assert "**" not in families and families.count("| yes |") == 3
    backdoored = render(samples.backdoored_purified(), "md").split("### Trigger families")[1].split("###")[0]
    assert backdoored.count("**yes, the evidence**") == 1
