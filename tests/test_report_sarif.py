"""SARIF for GitHub code scanning: schema-valid, located at the weights file, stable across runs, within limits.

There is no network here to fetch the OASIS schema, so validation uses
``tests/data/sarif-2.1.0-subset.schema.json``: a subset written for these tests
that covers the objects cbpt-guard emits (their required properties, enums,
bounds, and no unknown properties), not the whole SARIF standard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import verdict_samples as samples

from cbpt_guard.report import render
from cbpt_guard.report.findings import RULES
from cbpt_guard.report.sarif import FINGERPRINT_KEY, MAX_RESULTS, artifact_uri, render_sarif, sarif_log

SUBSET_SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-2.1.0-subset.schema.json").read_text())
GITHUB_MAX_BYTES = 10 * 1024 * 1024
# RFC 3986: the characters a URI reference may hold, percent signs only as %XX.
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("uri-reference")
def _uri_reference(value: object) -> bool:
    return isinstance(value, str) and bool(_URI_CHARS.fullmatch(value))


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return _uri_reference(value) and bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value))


def validate(log: dict) -> None:
    """Schema-valid, and within what GitHub code scanning accepts and displays."""
    jsonschema.Draft7Validator(SUBSET_SCHEMA, format_checker=FORMATS).validate(log)
    for run in log["runs"]:
        assert len(run["results"]) <= MAX_RESULTS
        for result in run["results"]:
            assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1
            assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]


def results(verdict, **kwargs) -> list[dict]:
    return json.loads(render_sarif(verdict, **kwargs))["runs"][0]["results"]


def test_the_subset_schema_refuses_what_sarif_refuses():
    log = sarif_log(samples.blocked_unsafe())
    validate(log)
    bad_level = json.loads(json.dumps(log))
    bad_level["runs"][0]["results"][0]["level"] = "fatal"
    bad_suppression = json.loads(json.dumps(log))
    bad_suppression["runs"][0]["results"][0]["suppressions"] = [{"kind": "waiver"}]
    unknown_property = json.loads(json.dumps(log))
    unknown_property["runs"][0]["results"][0]["severity"] = "high"
    no_line = json.loads(json.dumps(log))
    no_line["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    for broken in (bad_level, bad_suppression, unknown_property, no_line, {**log, "version": "2.0.0"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(SUBSET_SCHEMA, format_checker=FORMATS).validate(broken)


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_is_valid_sarif(name):
    validate(json.loads(render(samples.ALL[name](), "sarif")))


def test_one_rule_per_kind_of_finding():
    rules = sarif_log(samples.clean_pass())["runs"][0]["tool"]["driver"]["rules"]
    assert [r["name"] for r in rules] == ["unsafe-serialisation", "backdoor-evidence", "purification-missed-bars",
                                          "step-incomplete"]
    assert len({r["id"] for r in rules}) == len(RULES)


def test_a_clean_pass_has_no_results():
    assert results(samples.clean_pass()) == []


def test_unsafe_serialisation_and_incomplete_steps_are_reported_most_severe_first():
    found = results(samples.blocked_unsafe())
    assert found[0]["ruleId"] == "CBPT001" and found[0]["level"] == "error"
    assert "os.system, builtins.exec" in found[0]["message"]["text"]
    steps = [r for r in found if r["ruleId"] == "CBPT004"]
    assert len(steps) == 5 and [r["level"] for r in found] == sorted((r["level"] for r in found),
                                                                      key=["error", "warning", "note"].index)


def test_results_point_at_the_weights_file_relative_to_the_repository():
    location = results(samples.backdoored_purified())[0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "models/shapes-vit/open_clip_model.safetensors", "uriBaseId": "%SRCROOT%"}


def test_repo_root_relativises_absolute_paths_and_leaves_outside_paths_absolute(tmp_path):
    inside = tmp_path / "repo" / "models" / "my model" / "w.safetensors"
    assert artifact_uri(str(inside), tmp_path / "repo") == ("models/my%20model/w.safetensors", True)
    assert artifact_uri("/elsewhere/w.bin", tmp_path / "repo") == ("file:///elsewhere/w.bin", False)
    assert artifact_uri("./models/../models/w.bin") == ("models/w.bin", True)


def test_fingerprints_depend_on_the_checkpoint_and_the_rule_not_on_the_wording():
    verdict = samples.backdoored_purified()
    first = results(verdict)[0]["partialFingerprints"][FINGERPRINT_KEY]
    assert first == results(verdict)[0]["partialFingerprints"][FINGERPRINT_KEY]
    rescored = verdict.model_copy(update={"detection": verdict.detection.model_copy(update={"score": 0.99991})})
    assert results(rescored)[0]["partialFingerprints"][FINGERPRINT_KEY] == first
    other = verdict.model_copy(update={"checkpoint": verdict.checkpoint.model_copy(update={"digest": "ab" * 32})})
    assert results(other)[0]["partialFingerprints"][FINGERPRINT_KEY] != first
    steps = [r["partialFingerprints"][FINGERPRINT_KEY] for r in results(samples.blocked_unsafe())]
    assert len(set(steps)) == len(steps)


def test_a_waived_finding_carries_an_external_suppression_with_the_waivers_reason():
    backdoor = results(samples.waived())[0]
    assert backdoor["ruleId"] == "CBPT002"
    assert backdoor["suppressions"] == [{
        "kind": "external", "status": "accepted",
        "justification": "False positive on the checkerboard texture class; reviewed by the ML safety team.",
        "properties": {"waiverId": "W-2025-014", "owner": "alice@example.com", "expires": "2025-12-31"}}]
    assert "Waiver W-2024-101 expired on 2024-12-31." in backdoor["message"]["text"]


def test_result_count_and_file_size_are_capped_keeping_the_most_severe():
    verdict = samples.many_classes()
    capped = sarif_log(verdict, max_results=10)["runs"][0]
    assert len(capped["results"]) == 10 and capped["properties"]["resultsLeftOut"] == 791
    notice = capped["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]
    assert notice.startswith("791 of 801 results were left out")
    assert all(r["level"] == "error" for r in capped["results"])
    small = render_sarif(verdict, max_bytes=200_000)
    assert len(small.encode()) <= 200_000
    validate(json.loads(small))
    full = render(verdict, "sarif")
    assert len(full.encode()) <= GITHUB_MAX_BYTES
    validate(json.loads(full))


def _backdoor_result(verdict) -> dict:
    return next(r for r in results(verdict) if r["ruleId"] == "CBPT002")


@pytest.mark.parametrize("level", ["error", "warning", "note"])
def test_a_purified_checkpoint_keeps_its_backdoor_finding_at_the_policys_level(level):
    verdict = samples.backdoored_purified()
    settings = verdict.policy.settings | {"decision": {"fail_on": [], "purified_level": level}}
    verdict = verdict.model_copy(update={"policy": verdict.policy.model_copy(update={"settings": settings})})
    result = _backdoor_result(verdict)
    assert result["level"] == level
    assert "deploy the purified classifier, not the original weights" in result["message"]["text"]
    assert result["properties"]["decision"] == "purified"


def test_a_blocked_backdoor_stays_an_error_whatever_the_purified_level():
    verdict = samples.purification_missed()
    settings = verdict.policy.settings | {"decision": {"fail_on": [], "purified_level": "note"}}
    verdict = verdict.model_copy(update={"policy": verdict.policy.model_copy(update={"settings": settings})})
    assert _backdoor_result(verdict)["level"] == "error"


def _uri(verdict, **kwargs) -> str:
    return json.loads(render_sarif(verdict, **kwargs))["runs"][0]["results"][0]["locations"][0][
        "physicalLocation"]["artifactLocation"]["uri"]


def _at(verdict, path: Path):
    files = tuple(f.model_copy(update={"path": str(path / Path(f.path).name)}) for f in verdict.checkpoint.files)
    return verdict.model_copy(update={"checkpoint": verdict.checkpoint.model_copy(update={"files": files})})


def test_locations_are_relative_to_the_git_top_level_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # not inside the repository: the root is found from the checkpoint's own path
    verdict = _at(samples.blocked_unsafe(), repo / "models" / "m")
    assert _uri(verdict) == "models/m/open_clip_pytorch_model.bin"
    assert _uri(verdict, absolute=True) == f"file://{repo}/models/m/open_clip_pytorch_model.bin"


def test_locations_are_relative_to_the_actions_workspace_when_there_is_one(tmp_path, monkeypatch):
    workspace = tmp_path / "ws"
    (workspace / "m").mkdir(parents=True)
    monkeypatch.setenv("GITHUB_WORKSPACE", str(workspace))
    monkeypatch.chdir(tmp_path)
    assert _uri(_at(samples.blocked_unsafe(), workspace / "m")) == "m/open_clip_pytorch_model.bin"


def test_without_a_repository_locations_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    (tmp_path / "a" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    assert _uri(_at(samples.blocked_unsafe(), tmp_path / "a" / "m")) == "m/open_clip_pytorch_model.bin"
