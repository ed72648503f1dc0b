"""``cbpt-guard report``: re-render a saved Verdict; anything that is not one is a one-line usage error."""

from __future__ import annotations

import json

import pytest
import verdict_samples as samples
from click.testing import CliRunner

from cbpt_guard.cli import main as cli_main
from cbpt_guard.cli.report_cmd import report_command
from cbpt_guard.errors import UsageError
from cbpt_guard.report import render


@pytest.fixture()
def saved(tmp_path):
    verdict = samples.backdoored_purified()
    path = tmp_path / "verdict.json"
    path.write_text(verdict.to_json(), encoding="utf-8")
    return verdict, path


@pytest.mark.parametrize("fmt", ["html", "md", "sarif", "json"])
def test_renders_a_saved_verdict_exactly_as_the_library_does(saved, fmt):
    verdict, path = saved
    result = CliRunner().invoke(report_command, [str(path), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout == render(verdict, fmt)


def test_out_writes_the_report_to_a_file(saved, tmp_path):
    verdict, path = saved
    out = tmp_path / "again.md"
    result = CliRunner().invoke(report_command, [str(path), "--format", "md", "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text(encoding="utf-8") == render(verdict, "md")


def test_repo_root_relativises_the_sarif_location(tmp_path):
    verdict = samples.backdoored_purified()
    weights = tmp_path / "repo" / "models" / "w.safetensors"
    files = tuple(f.model_copy(update={"path": str(weights)}) if f.role == "weights" else f
                  for f in verdict.checkpoint.files)
    moved = verdict.model_copy(update={"checkpoint": verdict.checkpoint.model_copy(update={"files": files})})
    path = tmp_path / "verdict.json"
    path.write_text(moved.to_json(), encoding="utf-8")
    result = CliRunner().invoke(report_command, [str(path), "--format", "sarif", "--repo-root",
                                                 str(tmp_path / "repo")])
    location = json.loads(result.stdout)["runs"][0]["results"][0]["locations"][0]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == "models/w.safetensors"


def test_sarif_locations_are_repository_relative_without_repo_root_and_absolute_only_when_asked(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    verdict = samples.backdoored_purified()
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    weights = repo / "models" / "w.safetensors"
    files = tuple(f.model_copy(update={"path": str(weights)}) if f.role == "weights" else f
                  for f in verdict.checkpoint.files)
    moved = verdict.model_copy(update={"checkpoint": verdict.checkpoint.model_copy(update={"files": files})})
    path = tmp_path / "verdict.json"
    path.write_text(moved.to_json(), encoding="utf-8")
    monkeypatch.chdir(repo)

    def uri(*flags: str) -> str:
        result = CliRunner().invoke(report_command, [str(path), "--format", "sarif", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
            "artifactLocation"]["uri"]

    assert uri() == "models/w.safetensors"
    assert uri("--absolute-paths") == f"file://{weights}"


def test_the_terminal_line_of_a_purified_pass_says_purified_and_what_to_deploy():
    from cbpt_guard.cli.check_cmd import format_verdict

    lines = format_verdict(samples.backdoored_purified()).splitlines()
    assert lines[0] == ("PURIFIED: models/shapes-vit under policy strict (enforce): deploy the purified classifier, "
                        "not the original weights")
    assert lines[-1] == "exit 0"
    assert format_verdict(samples.clean_pass()).startswith("PASS: models/shapes-vit-clean under policy strict")


def _write(tmp_path, content: str | bytes):
    path = tmp_path / "verdict.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _newer_version(tmp_path):
    data = json.loads(samples.clean_pass().to_json())
    data["schema_version"] = 99
    return _write(tmp_path, json.dumps(data))


def _missing_field(tmp_path):
    data = json.loads(samples.clean_pass().to_json())
    del data["checkpoint"]["digest"]
    return _write(tmp_path, json.dumps(data))


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: tmp / "absent.json", "cannot read the verdict file"),
    (lambda tmp: _write(tmp, "{not json"), "invalid JSON at line 1"),
    (lambda tmp: _write(tmp, b"\xff\xfe\x00bad"), "not UTF-8"),
    (lambda tmp: _write(tmp, "[1, 2]"), "unsupported Verdict schema_version None"),
    (_newer_version, "unsupported Verdict schema_version 99"),
    (_missing_field, "not a valid Verdict: checkpoint.digest: Field required"),
])
def test_a_bad_verdict_file_is_a_one_line_usage_error(tmp_path, make, expected):
    result = CliRunner().invoke(report_command, [str(make(tmp_path)), "--format", "html"])
    assert isinstance(result.exception, UsageError)
    message = str(result.exception)
    assert expected in message and "\n" not in message


def test_through_the_cli_group_a_bad_file_exits_4_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(cli_main.COMMANDS, "report",
                        ("cbpt_guard.cli.report_cmd:report_command", "Render a saved Verdict again."))
    result = CliRunner().invoke(cli_main.cli, ["report", str(_newer_version(tmp_path))])
    assert result.exit_code == 4
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cbpt-guard: error: ")


def test_an_unknown_format_is_refused_by_click(saved):
    result = CliRunner().invoke(report_command, [str(saved[1]), "--format", "pdf"])
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output
