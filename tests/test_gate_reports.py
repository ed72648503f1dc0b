"""The gate lists the reports its check wrote; it never writes them a second time.

The check writes each checkpoint's reports once, with SARIF paths relative to
the repository the gate runs in, and records a failure to write them as a
fail-closed step of its own; the gate adds only the run's combined files.
"""

from __future__ import annotations

from pathlib import Path

from fake_github import FakeCheck, make_verdict

from cbpt_guard.github.gate import GateSettings, gate_targets

MARK = "<!-- as the check left it -->\n"


class _MarkingCheck(FakeCheck):
    """The fake check, which then marks its HTML report: a second writer would erase the mark."""

    def __call__(self, model, **kwargs):
        verdict = super().__call__(model, **kwargs)
        html = Path(kwargs["out_dir"]) / "report.html"
        html.write_text(html.read_text(encoding="utf-8") + MARK, encoding="utf-8")
        return verdict


def _gate(tmp_path, check):
    root = tmp_path / "repo"
    (root / "models" / "m").mkdir(parents=True)
    settings = GateSettings(root=str(root), out_dir=str(tmp_path / "out"))
    return gate_targets(["models/m"], settings, check_fn=check), root


def test_the_gate_does_not_rewrite_the_reports_its_check_wrote(tmp_path):
    (outcome,), _ = _gate(tmp_path, _MarkingCheck({"models/m": make_verdict("models/m", "block")}))
    html = Path(outcome.reports["html"])
    assert html.read_text(encoding="utf-8").endswith(MARK)
    assert set(outcome.reports) == {"json", "html", "md", "sarif"}
    assert all(Path(path).parent == html.parent for path in outcome.reports.values())


def test_the_check_writes_sarif_paths_relative_to_the_gated_repository(tmp_path):
    check = FakeCheck({"models/m": make_verdict("models/m", "block")})
    _, root = _gate(tmp_path, check)
    ((_, kwargs),) = check.calls
    assert kwargs["repo_root"] == str(root) and kwargs["out_dir"] == str(tmp_path / "out" / "models__m")


def test_reports_the_check_did_not_write_are_not_listed(tmp_path):
    class Silent(FakeCheck):
        def __call__(self, model, **kwargs):
            return super().__call__(model, **{k: v for k, v in kwargs.items() if k != "out_dir"})

    (outcome,), _ = _gate(tmp_path, Silent({"models/m": make_verdict("models/m")}))
    assert outcome.reports == {} and outcome.verdict is not None
