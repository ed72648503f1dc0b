"""How a policy is read and named: YAML 1.2 scalars, calibration files kept beside the policy, and helpful errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cbpt_guard.cli.main import cli
from cbpt_guard.errors import ExitCode
from cbpt_guard.policy import PolicyError, load_policy, load_policy_text, resolve_policy

BUDGET = "version: 1\nmode: enforce\ndetection:\n  budget:\n    steps: {steps}\n  calibration: builtin\n"


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


# -- YAML 1.2 scalars --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["0x12C", "5:00", "3_00", "0300", "0b100101100", "1_0.5"])
def test_validate_refuses_integers_yaml_1_1_reads_differently_naming_file_line_and_key(tmp_path, steps):
    path = tmp_path / "p.yaml"
    path.write_text(BUDGET.format(steps=steps))
    result = _run("policy", "validate", path)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith(f"{path}:5: detection.budget.steps: '{steps}' is not a decimal number")


@pytest.mark.parametrize("value", ["yes", "off", "On", "n"])
def test_a_yaml_1_1_boolean_word_is_refused_not_read_as_a_flag(value):
    with pytest.raises(PolicyError, match=f"x.yaml:5: export.enabled: '{value}' is a boolean to YAML 1.1"):
        load_policy_text(f"version: 1\nmode: enforce\ndetection: {{calibration: builtin}}\nexport:\n  "
                         f"enabled: {value}\n", "x.yaml")


@pytest.mark.parametrize(("steps", "expected"), [("300", 300), ("+300", 300), ("0", None)])
def test_decimal_integers_are_read_as_written(steps, expected):
    if expected is None:  # 0 is a number (and then out of range), not refused as non-decimal
        with pytest.raises(PolicyError, match="greater than or equal to 1"):
            load_policy_text(BUDGET.format(steps=steps), "x.yaml")
        return
    assert load_policy_text(BUDGET.format(steps=steps), "x.yaml").policy.detection.budget.steps == expected


def test_floats_booleans_and_quoted_text_still_read_as_before():
    policy = load_policy_text(
        "version: 1\nmode: enforce\ndescription: '0x12C at 5:00, yes'\ndetection: {calibration: builtin}\n"
        "export: {enabled: false, parity_tolerance: 1e-4}\nverification: {max_asr: .05, max_ca_drop: 0.5}\n",
        "x.yaml").policy
    assert policy.description == "0x12C at 5:00, yes"
    assert (policy.export.enabled, policy.export.parity_tolerance) == (False, 1e-4)
    assert (policy.verification.max_asr, policy.verification.max_ca_drop) == (0.05, 0.5)


# -- the calibration file stays beside the policy ----------------------------------------------------


@pytest.mark.parametrize("named", ["/etc/passwd", "../cal.json", "cal/../../cal.json"])
def test_a_calibration_outside_the_policy_folder_is_refused_with_exit_4(tmp_path, named):
    folder = tmp_path / "policies"
    folder.mkdir()
    (tmp_path / "cal.json").write_text("{}")
    path = folder / "p.yaml"
    path.write_text(f"version: 1\nmode: enforce\ndetection:\n  calibration: {named}\n")
    result = _run("policy", "validate", path)
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith(f"{path}:4: detection.calibration: '{named}' must be a path inside")
    checked = _run("check", tmp_path / "model", "--policy", path)
    assert checked.exit_code == ExitCode.USAGE and "detection.calibration" in checked.stderr


def test_a_calibration_that_links_out_of_the_policy_folder_is_refused(tmp_path):
    (tmp_path / "secret.json").write_text("{}")
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "cal.json").symlink_to(tmp_path / "secret.json")
    path = folder / "p.yaml"
    path.write_text("version: 1\nmode: enforce\ndetection:\n  calibration: cal.json\n")
    with pytest.raises(PolicyError, match=r"p.yaml:4: detection.calibration: 'cal.json' leads outside"):
        load_policy(path)


def test_a_calibration_in_the_policy_folder_or_below_is_accepted(tmp_path):
    (tmp_path / "cal").mkdir()
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmode: enforce\ndetection:\n  calibration: cal/vit.json\n")
    assert load_policy(path).calibration_path == tmp_path / "cal" / "vit.json"


def test_a_workflow_override_of_a_policy_with_a_calibration_file_still_loads(tmp_path):
    from cbpt_guard.github.policy_overrides import PolicyOverrides, effective_policy

    (tmp_path / "cal.json").write_text(json.dumps({"made": "here"}))
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmode: enforce\ndetection:\n  calibration: cal.json\n")
    derived = load_policy(effective_policy(str(path), PolicyOverrides(mode="warn"), tmp_path / "out"))
    assert derived.policy.mode.value == "warn"
    assert json.loads(derived.calibration_path.read_text()) == {"made": "here"}


# -- errors that lead to the fix ---------------------------------------------------------------------


def test_a_missing_file_named_like_a_ready_policy_names_the_ready_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("check", "model", "--policy", "strict.yaml")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.strip() == ("cbpt-guard: error: strict.yaml: no such policy file; the ready policy of that "
                                     "name is --policy strict")


def test_a_misspelt_ready_policy_gets_did_you_mean():
    with pytest.raises(PolicyError, match="did you mean 'strict'"):
        resolve_policy("strcit")


def test_a_misspelt_key_is_shown_with_did_you_mean_and_not_hidden_behind_the_missing_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmodee: enforce\ndetection:\n  calibration: builtin\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == (f"{path}:2: modee: unknown key (did you mean 'mode'?); allowed here: version, "
                                 "description, mode, data, detection, evidence, purification, verification, decision, "
                                 "export, run, sweep, waivers (and 1 more)")
    result = _run("check", tmp_path / "model", "--policy", path)
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [
        f"cbpt-guard: error: {path}:1: mode: required key is missing",
        f"cbpt-guard: error: {path}:2: modee: unknown key (did you mean 'mode'?); allowed here: version, description, "
        "mode, data, detection, evidence, purification, verification, decision, export, run, sweep, waivers",
    ]
