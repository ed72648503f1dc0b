"""Pull request mode against a fake GitHub API: one sticky comment, a check run with batched annotations,
nothing posted without a token, and API failures reported without touching the gate's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_github import FakeCheck, FakeGitHub, make_verdict

from cbpt_guard.cli.github_cmd import github_group
from cbpt_guard.errors import ExitCode, NothingScannableError, UsageError
from cbpt_guard.github.client import Connection
from cbpt_guard.github.discover import ChangedFile, checkpoints_from_changes, find_models
from cbpt_guard.github.gate import GateSettings
from cbpt_guard.github.outputs import format_outputs
from cbpt_guard.github.policy_overrides import PolicyOverrides, effective_policy
from cbpt_guard.github.pr import PublishOptions, run_pull_request
from cbpt_guard.github.publish import PullRequestRef
from cbpt_guard.github.sarif import merge_sarif
from cbpt_guard.github.summary import COMMENT_MARKER
from cbpt_guard.policy.load import load_policy

REPO = "acme/models"


def _model(root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"\0" * 8)


@pytest.fixture
def repo_root(tmp_path):
    """A checkout with two model folders and a README."""
    root = tmp_path / "repo"
    _model(root, "models/bad")
    _model(root, "models/good")
    (root / "README.md").write_text("models")
    return root


@pytest.fixture
def data_root(repo_root):
    """The checkout, with probe images, a few-shot ImageFolder and a class-names file beside the models."""
    (repo_root / "data" / "probes").mkdir(parents=True)
    (repo_root / "data" / "fewshot" / "cat").mkdir(parents=True)
    (repo_root / "data" / "classes.txt").write_text("cat\ndog\n")
    return repo_root


@pytest.fixture
def cli_env(monkeypatch):
    """No GitHub context from the environment the tests run in."""
    for name in ("CBPT_TOKEN", "GITHUB_TOKEN", "GITHUB_REPOSITORY", "GITHUB_EVENT_PATH", "GITHUB_OUTPUT",
                 "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake():
    with FakeGitHub(REPO) as server:
        server.add_pull(7, [("models/bad/open_clip_model.safetensors", "modified"),
                            ("models/good/open_clip_config.json", "added"), ("README.md", "modified")])
        yield server


def _run(root: Path, fake: FakeGitHub, check, *, token="t0ken", models=(), summary=None, mode=None, **data_paths):
    # No retries and no spacing of writes, so a failing call answers at once.
    connection = Connection(token=token, api_url=fake.api_url, retries=0, write_interval_s=0)
    settings = GateSettings(root=str(root), out_dir=str(root.parent / "out"), overrides=PolicyOverrides(mode=mode),
                            **data_paths)
    return run_pull_request(settings, connection, PullRequestRef(REPO, 7), models=models, check_fn=check,
                            options=PublishOptions(step_summary=summary))


def _two_models():
    return FakeCheck({"models/bad": make_verdict("models/bad", "block"), "models/good": make_verdict("models/good")})


def test_comment_is_created_once_then_updated_in_place(repo_root, fake):
    check = _two_models()
    first = _run(repo_root, fake, check)
    assert first.publish.comment == "created"
    assert [c[0] for c in check.calls] == [str(repo_root / "models/bad"), str(repo_root / "models/good")]

    check.answers["models/bad"] = make_verdict("models/bad", "pass")
    second = _run(repo_root, fake, check)

    assert second.publish.comment == "updated"
    assert len(fake.calls("POST", rf"/repos/{REPO}/issues/7/comments")) == 1
    assert len(fake.calls("PATCH", rf"/repos/{REPO}/issues/comments/\d+")) == 1
    comments = fake.comments[7]
    assert len(comments) == 1 and comments[0]["body"].startswith(COMMENT_MARKER)
    assert "no evidence of a backdoor found (2 of 2 checkpoints)" in comments[0]["body"]
    assert (first.exit_code, second.exit_code) == (1, 0)


def test_comment_quoting_the_marker_is_not_taken_over(repo_root, fake):
    fake.add_comment(7, f"> {COMMENT_MARKER}\n> quoted by a reviewer")
    _run(repo_root, fake, _two_models())
    assert len(fake.comments[7]) == 2
    assert fake.comments[7][0]["body"].startswith("> ")


def test_blocked_checkpoint_fails_check_run_on_the_head_commit(repo_root, fake):
    run = _run(repo_root, fake, _two_models())
    (check_run,) = fake.check_runs
    assert check_run["conclusion"] == "failure" and check_run["status"] == "completed"
    assert check_run["head_sha"] == "a" * 40
    assert check_run["output"]["title"] == "cbpt-guard: blocked (1 of 2 checkpoints)"
    failures = [a for a in check_run["annotations"] if a["annotation_level"] == "failure"]
    assert {a["path"] for a in failures} == {"models/bad/open_clip_model.safetensors"}
    assert run.exit_code == 1


def test_120_annotations_go_out_in_three_calls_of_at_most_50(repo_root, fake):
    reasons = tuple(f"reason {i}" for i in range(120))
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block", reasons=reasons),
                       "models/good": make_verdict("models/good", reasons=())})
    run = _run(repo_root, fake, check)

    creates = fake.calls("POST", rf"/repos/{REPO}/check-runs")
    updates = fake.calls("PATCH", rf"/repos/{REPO}/check-runs/\d+")
    sizes = [len(r.body["output"]["annotations"]) for r in creates + updates]
    assert sizes == [50, 50, 20]
    assert creates[0].body["status"] == "in_progress" and "conclusion" not in creates[0].body
    assert updates[-1].body["conclusion"] == "failure" and updates[-1].body["status"] == "completed"
    assert [a["message"] for a in fake.check_runs[0]["annotations"]] == list(reasons)
    assert run.publish.check_run_calls == 3


def test_all_clean_is_success_in_one_call(repo_root, fake):
    check = FakeCheck({"models/bad": make_verdict("models/bad"), "models/good": make_verdict("models/good")})
    run = _run(repo_root, fake, check)
    assert fake.check_runs[0]["conclusion"] == "success"
    assert len(fake.calls("POST", rf"/repos/{REPO}/check-runs")) == 1
    assert not fake.calls("PATCH", rf"/repos/{REPO}/check-runs/\d+")
    assert run.exit_code == 0


def test_warn_mode_block_is_neutral_and_exits_zero(repo_root, fake):
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block", mode="warn"),
                       "models/good": make_verdict("models/good", mode="warn")})
    run = _run(repo_root, fake, check, mode="warn")
    assert fake.check_runs[0]["conclusion"] == "neutral"
    assert run.exit_code == 0
    assert "enforce would block" in fake.comments[7][0]["body"]
    # The override reached the check as a policy file of its own, with mode warn.
    policy_path = check.calls[0][1]["policy"]
    assert load_policy(policy_path).policy.mode.value == "warn"


def test_pull_request_touching_no_checkpoint_is_neutral_and_passes(repo_root, fake):
    # A model removed with its folder leaves nothing to check.
    fake.add_pull(8, [("README.md", "modified"), ("models/gone/open_clip_model.safetensors", "removed")])
    connection = Connection(token="t", api_url=fake.api_url, retries=0, write_interval_s=0)
    run = run_pull_request(GateSettings(root=str(repo_root), out_dir=str(repo_root.parent / "out")), connection,
                           PullRequestRef(REPO, 8), check_fn=FakeCheck({}))
    assert run.targets == [] and run.exit_code == 0
    assert fake.check_runs[0]["conclusion"] == "neutral"
    assert "no checkpoints changed" in fake.comments[8][0]["body"]


def test_missing_token_posts_nothing_but_shows_the_verdict_and_keeps_exit_code(repo_root, fake, tmp_path,
                                                                               monkeypatch):
    for name in ("CBPT_TOKEN", "GITHUB_TOKEN", "GITHUB_EVENT_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(repo_root)
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)
    summary = tmp_path / "step-summary.md"

    result = CliRunner().invoke(github_group, ["pr", "models/bad", "--repo", REPO, "--pr", "7",
                                               "--api-url", fake.api_url, "--out", str(tmp_path / "out"),
                                               "--step-summary", str(summary)])

    assert result.exit_code == 1, result.output
    assert fake.requests == []
    assert "models/bad: block (exit 1)" in result.stdout
    assert "no GitHub token was given" in result.stderr
    text = summary.read_text()
    assert "| models/bad | block |" in text and "no GitHub token was given" in text
    assert (tmp_path / "out" / "models__bad" / "report.html").is_file()


def test_without_token_or_models_the_pull_request_cannot_be_listed(repo_root, fake):
    with pytest.raises(UsageError, match="no GitHub token to list") as caught:
        _run(repo_root, fake, FakeCheck({}), token=None)
    assert caught.value.exit_code == ExitCode.USAGE == 4


@pytest.mark.parametrize("failing, status, headers, message, expected", [
    ("POST", 403, {}, "Resource not accessible by integration", "lacks permission"),
    ("POST", 404, {}, "Not Found", "not found"),
    ("POST", 403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1900000000"},
     "API rate limit exceeded for installation ID 1.", "rate limit exceeded"),
])
def test_api_errors_are_reported_without_crashing_the_gate(repo_root, fake, failing, status, headers, message,
                                                            expected, tmp_path):
    fake.fail(failing, rf"/repos/{REPO}/(issues/7/comments|check-runs)", status, message, headers)
    summary = tmp_path / "summary.md"
    run = _run(repo_root, fake, _two_models(), summary=summary)

    assert run.exit_code == 1  # the blocked checkpoint still fails the gate
    assert [p.action for p in run.problems] == ["posting the pull request comment", "creating the check run"]
    assert all(p.status == status and expected in p.message for p in run.problems)
    assert expected in summary.read_text() and "| models/bad | block |" in summary.read_text()
    # Failed posts are not retried (a retried POST could post twice).
    assert len(fake.calls("POST", rf"/repos/{REPO}/check-runs")) == 1


def test_rate_limited_file_listing_is_inconclusive_not_a_pass(repo_root, fake):
    fake.fail("GET", rf"/repos/{REPO}/pulls/7/files", 403, "API rate limit exceeded for user ID 1.",
              {"X-RateLimit-Remaining": "0"})
    run = _run(repo_root, fake, FakeCheck({}))
    assert (run.exit_code, run.decision) == (3, "inconclusive")
    assert "rate limit" in run.problems[0].message
    assert fake.check_runs[0]["conclusion"] == "failure"
    assert "files could not be listed" in fake.comments[7][0]["body"]


def test_crashing_check_is_an_error_outcome_and_others_still_run(repo_root, fake):
    check = FakeCheck({"models/bad": RuntimeError("boom"), "models/good": make_verdict("models/good")})
    run = _run(repo_root, fake, check)
    assert [o.decision for o in run.outcomes] == ["error", "pass"]
    assert run.exit_code == 2
    assert "internal error\\: RuntimeError\\: boom" in fake.comments[7][0]["body"]  # escaped, renders as is


def test_typed_error_keeps_its_exit_code(repo_root, fake):
    check = FakeCheck({"models/bad": NothingScannableError("nothing here"), "models/good": make_verdict("models/good")})
    run = _run(repo_root, fake, check)
    assert run.outcomes[0].exit_code == 3 and run.exit_code == 3


def test_requests_use_the_enterprise_base_url_and_the_token(repo_root, fake):
    _run(repo_root, fake, _two_models())
    assert fake.requests and all(r.authorization == "token t0ken" for r in fake.requests)
    assert not [r for r in fake.requests if r.path.startswith("/__outside_prefix__")]


def _run_pr_with_outputs(repo_root, fake, tmp_path, monkeypatch, check):
    """``github pr`` on pull request 7, ``check`` standing in for the pipeline; (result, the $GITHUB_OUTPUT file)."""
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": "f" * 40}}}))
    outputs = tmp_path / "outputs.txt"
    result = CliRunner().invoke(github_group, [
        "pr", "--api-url", fake.api_url, "--out", str(tmp_path / "out"), "--github-output", str(outputs)],
        env={"GITHUB_REPOSITORY": REPO, "GITHUB_EVENT_PATH": str(event), "CBPT_TOKEN": "t0ken",
             "GITHUB_STEP_SUMMARY": ""})
    return result, outputs


def test_step_outputs_and_reports_are_written(repo_root, fake, tmp_path, monkeypatch):
    result, outputs = _run_pr_with_outputs(repo_root, fake, tmp_path, monkeypatch, _two_models())

    assert result.exit_code == 1, result.output
    assert fake.check_runs[0]["head_sha"] == "f" * 40
    parsed = _parse_outputs(outputs.read_text())
    assert parsed["decision"] == "block" and parsed["exit-code"] == "1"
    assert json.loads(parsed["checkpoints"]) == ["models/bad", "models/good"]
    assert json.loads(parsed["metrics"])["models/bad"]["score"] == pytest.approx(0.91)
    sarif = json.loads(Path(parsed["sarif"]).read_text())
    assert len(sarif["runs"]) == 1
    uris = {loc["physicalLocation"]["artifactLocation"]["uri"]
            for result in sarif["runs"][0]["results"] for loc in result["locations"]}
    assert "models/bad/open_clip_model.safetensors" in uris
    assert all(Path(p).is_file() for p in parsed["html-reports"].splitlines())


def test_a_purified_checkpoint_is_a_neutral_check_run_and_the_decision_output_says_purified(repo_root, fake,
                                                                                          tmp_path, monkeypatch):
    check = FakeCheck({"models/bad": make_verdict("models/bad", "purified"),
                       "models/good": make_verdict("models/good")})
    result, outputs = _run_pr_with_outputs(repo_root, fake, tmp_path, monkeypatch, check)

    assert result.exit_code == 0, result.output
    parsed = _parse_outputs(outputs.read_text())
    assert parsed["decision"] == "purified" and parsed["exit-code"] == "0"
    (check_run,) = fake.check_runs
    assert check_run["conclusion"] == "neutral"  # amber in GitHub's checks list, not a green success
    assert check_run["output"]["title"] == ("cbpt-guard: purified: deploy the purified classifier, not the original "
                                            "(1 of 2 checkpoints)")
    assert check_run["output"]["summary"].startswith("## cbpt-guard: purified: deploy the purified classifier")
    notes = [a for a in check_run["annotations"] if a["title"] == "cbpt-guard: deploy the purified classifier"]
    assert [a["message"] for a in notes] == ["purified: deploy the purified classifier, not the original weights"]
    assert {a["path"] for a in notes} == {"models/bad/open_clip_model.safetensors"}


def test_a_policy_that_fails_on_purified_fails_the_check_run(repo_root, fake):
    failing = make_verdict("models/bad", "purified")
    failing = failing.model_copy(update={"decision": failing.decision.model_copy(update={"exit_code": 1})})
    run = _run(repo_root, fake, FakeCheck({"models/bad": failing, "models/good": make_verdict("models/good")}))
    assert fake.check_runs[0]["conclusion"] == "failure" and run.exit_code == 1


def _parse_outputs(text: str) -> dict[str, str]:
    """Read a $GITHUB_OUTPUT file the way the runner does (name<<DELIMITER blocks)."""
    values, lines = {}, iter(text.splitlines())
    for line in lines:
        name, _, delimiter = line.partition("<<")
        body = []
        for inner in lines:
            if inner == delimiter:
                break
            body.append(inner)
        values[name] = "\n".join(body)
    return values


def test_output_value_cannot_forge_another_output():
    text = format_outputs({"checkpoints": "a\nexit-code<<EOF\n0\nEOF", "exit-code": "1"})
    assert _parse_outputs(text) == {"checkpoints": "a\nexit-code<<EOF\n0\nEOF", "exit-code": "1"}


def test_changed_files_map_to_model_folders_and_stay_inside_the_repository(repo_root, tmp_path):
    (repo_root / "loose").mkdir()
    (repo_root / "loose" / "extra.pt").write_bytes(b"x")
    outside = tmp_path / "outside"
    _model(outside, "m")
    (repo_root / "escape").symlink_to(outside / "m")
    (repo_root / "app").mkdir()
    (repo_root / "app" / "config.json").write_text("{}")  # not a model: no weights beside it
    changes = [ChangedFile("models/bad/open_clip_model.safetensors"), ChangedFile("models/bad/open_clip_config.json"),
               ChangedFile("models/gone/open_clip_model.safetensors", "removed"), ChangedFile("loose/extra.pt"),
               ChangedFile("app/config.json"), ChangedFile("README.md")]
    assert checkpoints_from_changes(changes, repo_root) == ["loose/extra.pt", "models/bad"]
    for hostile in ("../outside/m/open_clip_config.json", "/etc/config.json", "escape/open_clip_config.json"):
        with pytest.raises(UsageError, match="outside the repository|climbs out"):
            checkpoints_from_changes([ChangedFile(hostile)], repo_root)


def test_model_globs_expand_and_a_pattern_matching_nothing_is_a_usage_error(repo_root):
    assert find_models(["models/*"], repo_root) == ["models/bad", "models/good"]
    with pytest.raises(UsageError, match="matches no model") as no_match:
        find_models(["models/missing*"], repo_root)
    with pytest.raises(UsageError, match="outside the repository") as outside:
        find_models(["../"], repo_root)
    assert no_match.value.exit_code == outside.value.exit_code == ExitCode.USAGE == 4


def test_policy_overrides_are_written_as_a_valid_policy(tmp_path):
    path = effective_policy("strict", PolicyOverrides(mode="dry-run", purify=False, export=False), tmp_path)
    policy = load_policy(path).policy
    assert (policy.mode.value, policy.evidence.on_backdoor.value, policy.export.enabled) == ("dry-run", "block", False)
    assert "Derived by cbpt-guard from" in Path(path).read_text()
    assert effective_policy("strict", PolicyOverrides(), tmp_path) == "strict"


def test_sarif_runs_merge_into_one_with_rule_indices_remapped():
    first = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "cbpt-guard", "rules": [{"id": "A"}]}},
                                           "results": [{"ruleId": "A", "ruleIndex": 0}]}]}
    second = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "cbpt-guard",
                                                                "rules": [{"id": "B"}, {"id": "A"}]}},
                                            "results": [{"ruleId": "A", "ruleIndex": 1},
                                                        {"ruleId": "B", "ruleIndex": 0}]}]}
    (run,) = merge_sarif([first, second])["runs"]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert rules == ["A", "B"]
    assert [(r["ruleId"], rules[r["ruleIndex"]]) for r in run["results"]] == [("A", "A"), ("A", "A"), ("B", "B")]


def test_changed_command_checks_each_model_folder_once_without_github(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.delenv("CBPT_TOKEN", raising=False)
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block"), "models/good": make_verdict("models/good")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(github_group, ["changed", "models/bad/open_clip_model.safetensors",
                                               "models/bad/open_clip_config.json", "README.md",
                                               "--out", str(tmp_path / "out")])

    assert result.exit_code == 1, result.output
    assert [model for model, _ in check.calls] == ["models/bad"]
    assert "models/bad: block (exit 1)" in result.stdout


def test_changed_command_passes_when_no_file_belongs_to_a_checkpoint(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: FakeCheck({}))
    result = CliRunner().invoke(github_group, ["changed", "README.md", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "no checkpoint to check" in result.stdout


def test_no_sarif_at_all_still_gives_one_run_with_no_results():
    (run,) = merge_sarif([])["runs"]
    assert run["results"] == [] and run["tool"]["driver"]["name"] == "cbpt-guard"


DATA_FLAGS = ["--probes", "data/probes", "--data", "data/fewshot", "--classes", "data/classes.txt"]


def test_probes_data_and_classes_reach_every_check_resolved_against_the_repository(data_root, fake):
    check = _two_models()
    _run(data_root, fake, check, probes="data/probes", data="data/fewshot", classes="data/classes.txt")

    assert len(check.calls) == 2
    for _, kwargs in check.calls:
        assert (kwargs["probes"], kwargs["data"], kwargs["classes_file"]) == (
            str(data_root / "data/probes"), str(data_root / "data/fewshot"), str(data_root / "data/classes.txt"))


def test_without_data_inputs_the_check_chooses_its_own_defaults(repo_root, fake):
    check = _two_models()
    _run(repo_root, fake, check)
    assert [(k["probes"], k["data"], k["classes_file"]) for _, k in check.calls] == [(None, None, None)] * 2


def test_pr_command_passes_the_data_flags_to_check(data_root, tmp_path, monkeypatch, cli_env):
    monkeypatch.chdir(data_root)
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(github_group, ["pr", "models/bad", *DATA_FLAGS, "--out", str(tmp_path / "out")])

    assert result.exit_code == 1, result.output
    ((model, kwargs),) = check.calls
    assert model == "models/bad"
    assert (kwargs["probes"], kwargs["data"], kwargs["classes_file"]) == (
        "data/probes", "data/fewshot", "data/classes.txt")


def test_changed_command_passes_the_data_flags_to_check(data_root, tmp_path, monkeypatch, cli_env):
    monkeypatch.chdir(data_root)
    check = FakeCheck({"models/good": make_verdict("models/good")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(github_group, ["changed", "models/good/open_clip_config.json", *DATA_FLAGS,
                                               "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert check.calls[0][1]["data"] == "data/fewshot"


@pytest.mark.parametrize("flag, value, message", [
    ("--probes", "data/nope", "the probes folder 'data/nope' does not exist"),
    ("--data", "data/classes.txt", "the data folder 'data/classes.txt' is not a folder"),
    ("--classes", "data/probes", "the classes file 'data/probes' is not a file"),
    ("--data", "x" * 5000, "the data folder 'xxxx"),
])
def test_bad_data_path_is_a_one_line_usage_error_before_any_check(data_root, tmp_path, monkeypatch, cli_env,
                                                                  flag, value, message):
    from cbpt_guard.cli.main import cli

    monkeypatch.chdir(data_root)
    check = FakeCheck({"models/bad": make_verdict("models/bad")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(cli, ["github", "pr", "models/bad", flag, value, "--out", str(tmp_path / "out")])

    assert result.exit_code == 4, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cbpt-guard: error: ")
    assert message in result.stderr and str(data_root.resolve()) in result.stderr
    assert check.calls == [] and result.stdout == ""


def test_absolute_data_path_is_used_as_given(data_root, fake, tmp_path):
    outside = tmp_path / "mounted" / "fewshot"
    outside.mkdir(parents=True)
    check = _two_models()
    _run(data_root, fake, check, data=str(outside))
    assert {k["data"] for _, k in check.calls} == {str(outside)}
