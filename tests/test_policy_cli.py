"""``cbpt-guard policy validate`` and ``policy show``, through the real top-level group."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from cbpt_guard.cli import main as cli_main
from cbpt_guard.policy import load_policy_text, resolve_policy

DIGEST = "ab" * 32
MINIMAL = "version: 1\nmode: enforce\ndetection:\n  score_threshold: 0.5\n"


@pytest.fixture
def run(monkeypatch):
    """Invoke ``cbpt-guard ARGS`` with the policy command registered, as main.py will register it."""
    monkeypatch.setitem(cli_main.COMMANDS, "policy",
                        ("cbpt_guard.cli.policy_cmd:policy_group", "Validate or show a policy file."))

    def invoke(*args: str):
        return CliRunner().invoke(cli_main.cli, list(args))

    return invoke


@pytest.mark.parametrize("name", ["strict", "balanced", "permissive"])
def test_validate_ready_policy_prints_ok_with_its_digest(run, name):
    loaded = resolve_policy(name)
    result = run("policy", "validate", loaded.source)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok: {name} (sha256 {loaded.sha256})"


def test_validate_invalid_policy_prints_each_problem_and_exits_4(run, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL.replace("0.5", "'high'") + "exprot:\n  enabled: true\n")
    result = run("policy", "validate", str(path))
    assert result.exit_code == 4
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:4: detection.score_threshold: Input should be a valid number",
        f"{path}:5: exprot: unknown key (did you mean 'export'?); allowed here: version, description, mode, data, "
        "detection, evidence, purification, verification, decision, export, run, sweep, waivers",
    ]


def test_validate_missing_file_exits_4(run, tmp_path):
    result = run("policy", "validate", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 4
    assert "no such policy file" in result.stderr


def test_validate_yaml_bomb_exits_4(run, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text('a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: [*b,*b]\n')
    result = run("policy", "validate", str(path))
    assert result.exit_code == 4
    assert f"{path}:1: anchors and aliases" in result.stderr


def test_validate_notes_an_expired_waiver_but_accepts_the_file(run, tmp_path):
    path = tmp_path / "waived.yaml"
    path.write_text(MINIMAL + f"waivers:\n  - {{id: W-7, scope: '{DIGEST}', reason: r, owner: o, "
                              "expires: 2001-01-01}\n")
    result = run("policy", "validate", str(path))
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: waived (sha256 ")
    assert "waiver W-7 expired on 2001-01-01" in result.stderr


def test_show_prints_every_setting_and_round_trips(run):
    result = run("policy", "show", "strict")
    assert result.exit_code == 0, result.output
    loaded = resolve_policy("strict")
    assert f"# sha256 {loaded.sha256}" in result.stdout
    assert "score_threshold: null" in result.stdout  # a default the file leaves out is shown
    assert load_policy_text(result.stdout, "shown.yaml").policy == loaded.policy


def test_show_accepts_a_path(run, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    result = run("policy", "show", str(path))
    assert result.exit_code == 0
    assert "on_required_skipped: inconclusive" in result.stdout


def test_show_unknown_name_exits_4_and_lists_ready_policies(run):
    result = run("policy", "show", "paranoid")
    assert result.exit_code == 4
    assert "ready policies: balanced, cpu-large-models, permissive, strict" in result.stderr


def test_policy_help_lists_both_subcommands(run):
    result = run("policy", "--help")
    assert result.exit_code == 0
    assert "validate" in result.stdout and "show" in result.stdout


def test_policy_modules_do_not_import_torch():
    code = ("import sys, cbpt_guard.cli.policy_cmd, cbpt_guard.policy, cbpt_guard.decide; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
