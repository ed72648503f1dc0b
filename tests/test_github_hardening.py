"""Hostile pull requests against the gate: forged workflow commands, side pickles, a PR weakening its own policy,
the token within reach of untrusted files, live mentions in the comment, and a package shadowing the gate."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fake_github import FakeCheck, FakeGitHub, make_verdict

from cbpt_guard.cli.main import cli
from cbpt_guard.errors import UsageError
from cbpt_guard.github.client import Connection
from cbpt_guard.github.gate import GateSettings
from cbpt_guard.github.pr import PublishOptions, run_pull_request
from cbpt_guard.github.publish import PullRequestRef
from cbpt_guard.policy.load import load_policy

ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/models"
FORGED = "::error title=forged::cbpt-guard passed"
BREAKS = ["\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x1b"]


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"\0" * 8)
    return folder


def _commands_honoured(text: str) -> list[str]:
    """Lines the Actions runner would read as a workflow command, outside a stop-commands region."""
    honoured, stopped_by = [], None
    for line in text.splitlines():
        if stopped_by is not None:
            if line.strip() == f"::{stopped_by}::":
                stopped_by = None
            continue
        match = re.fullmatch(r"\s*::stop-commands::(\w+)", line)
        if match:
            stopped_by = match.group(1)
        elif line.lstrip().startswith("::") or "##[" in line:
            honoured.append(line)
    return honoured


def _forged_lines(text: str) -> list[str]:
    """Lines that would read as a command if commands were not stopped (the stop/resume lines aside)."""
    tokens = set(re.findall(r"::stop-commands::(\w+)", text))
    own = {f"::stop-commands::{t}" for t in tokens} | {f"::{t}::" for t in tokens}
    return [line for line in text.splitlines()
            if line.strip() not in own and (line.lstrip().startswith("::") or "##[" in line)]


@pytest.fixture
def no_github(monkeypatch):
    for name in ("CBPT_TOKEN", "GITHUB_TOKEN", "GITHUB_REPOSITORY", "GITHUB_EVENT_PATH", "GITHUB_OUTPUT",
                 "GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)


# --- Forged workflow commands ------------------------------------------------------------------


@pytest.mark.parametrize("actions", [False, True], ids=["terminal", "github-actions"])
def test_pr_folder_named_as_a_workflow_command_cannot_forge_one(tmp_path, monkeypatch, no_github, actions):
    root = tmp_path / "repo"
    _model(root / FORGED)
    _model(root / "models" / "##[error]also forged")
    monkeypatch.chdir(root)
    if actions:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
    check = FakeCheck({FORGED: make_verdict(FORGED), "also forged": make_verdict("x", "block")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(cli, ["github", "changed", f"{FORGED}/open_clip_model.safetensors",
                                      "models/##[error]also forged/open_clip_config.json",
                                      "--out", str(tmp_path / "out")])

    assert result.exit_code == 1, result.output
    assert len(check.calls) == 2
    assert _forged_lines(result.stdout) == [] and _forged_lines(result.stderr) == []
    assert _commands_honoured(result.stdout) == [] and _commands_honoured(result.stderr) == []
    assert "\\::error title=forged::cbpt-guard passed: pass (exit 0)" in result.stdout
    if actions:  # both streams are wrapped, with one unguessable token
        for stream in (result.stdout, result.stderr):
            (token,) = re.findall(r"^::stop-commands::(\w{32})$", stream, re.M)
            assert stream.rstrip("\n").endswith(f"::{token}::")


def _safetensors(path: Path, name: str) -> None:
    header = json.dumps({name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 9)


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_tensor_name_with_a_line_break_and_a_command_stays_one_error_line(tmp_path, no_github, brk):
    weights = tmp_path / "model.safetensors"
    _safetensors(weights, f"visual.proj{brk}{FORGED}{brk}##[error]forged")

    result = CliRunner().invoke(cli, ["inspect", str(weights), "--arch", "ViT-B-32"])

    assert result.exit_code == 3, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("cbpt-guard: error:") and "visual.proj" in line and "forged" in line
    assert _forged_lines(result.output) == []


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_policy_key_with_a_line_break_stays_one_error_line(tmp_path, no_github, brk):
    policy = tmp_path / "policy.yaml"
    key = f"mode{brk}{FORGED}{brk}##[warning]x"
    strict = (ROOT / "policies" / "strict.yaml").read_text()
    policy.write_text(yaml.safe_dump({key: 1}, allow_unicode=False) + strict, encoding="utf-8")

    shown = CliRunner().invoke(cli, ["policy", "show", str(policy)])
    validated = CliRunner().invoke(cli, ["policy", "validate", str(policy)])

    assert (shown.exit_code, validated.exit_code) == (4, 4), (shown.output, validated.output)
    (line,) = shown.stderr.splitlines()
    assert line.startswith("cbpt-guard: error:") and "forged" in line
    assert validated.stderr.count("\n") == len(load_problems(policy))
    assert _forged_lines(shown.output + validated.output) == []


def load_problems(policy: Path) -> list:
    from cbpt_guard.policy import PolicyError

    with pytest.raises(PolicyError) as caught:
        load_policy(policy)
    return list(caught.value.problems)


def test_a_command_cut_across_two_writes_is_still_neutralised():
    import io

    from cbpt_guard.cli.terminal import SafeStream, safe_line

    raw = io.StringIO()
    stream = SafeStream(raw)
    stream.write("  :")
    stream.flush()
    stream.write(":error::x\nok ##")
    stream.write("[warning]y")
    stream.finish()
    assert raw.getvalue() == "  \\::error::x\nok #\\u0023[warning]y"
    assert json.loads(safe_line(json.dumps("##[x]\u2028\x85"))) == "##[x]\u2028\x85"  # still the same JSON


# --- Side pickles and paths outside the repository ---------------------------------------------


@pytest.fixture
def side_repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    good = _model(root / "models" / "good")
    (good / "extra_weights.pkl").write_bytes(b"\x80\x04evil")
    (good / "optimizer.pickle").write_bytes(b"\x80\x04evil")
    (good / "sub").mkdir()
    (good / "sub" / "state.npy").write_bytes(b"\x93NUMPY")
    (root / "loose").mkdir()
    (root / "loose" / "scaler.joblib").write_bytes(b"x")
    (root / "loose" / "notes.md").write_text("notes")
    monkeypatch.chdir(root)
    return root


def test_side_pickles_changed_in_a_model_folder_regate_it(side_repo, tmp_path, monkeypatch, no_github):
    check = FakeCheck({"models/good": make_verdict("models/good", "block")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)

    result = CliRunner().invoke(cli, ["github", "changed", "models/good/extra_weights.pkl",
                                      "models/good/optimizer.pickle", "--out", str(tmp_path / "out")])

    assert result.exit_code == 1, result.output
    assert [model for model, _ in check.calls] == [str(Path(".") / "models/good")]


def test_any_changed_file_in_a_model_folder_and_loose_serialised_files_are_gated(side_repo):
    from cbpt_guard.github.discover import ChangedFile, checkpoints_from_changes

    changes = [ChangedFile(name) for name in ("models/good/README.md", "models/good/sub/state.npy",
                                              "loose/scaler.joblib", "loose/notes.md")]
    assert checkpoints_from_changes(changes, side_repo) == ["loose/scaler.joblib", "models/good",
                                                             "models/good/sub/state.npy"]


def test_absolute_changed_path_inside_the_repository_is_gated_and_outside_is_refused(side_repo, tmp_path,
                                                                                     monkeypatch, no_github):
    check = FakeCheck({"models/good": make_verdict("models/good", "block")})
    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)
    inside = CliRunner().invoke(cli, ["github", "changed", str(side_repo / "models/good/open_clip_model.safetensors"),
                                      "--out", str(tmp_path / "out")])
    outside = CliRunner().invoke(cli, ["github", "changed", str(tmp_path / "elsewhere" / "model.safetensors"),
                                       "--out", str(tmp_path / "out")])
    climbing = CliRunner().invoke(cli, ["github", "changed", "../x/model.safetensors", "--out", str(tmp_path / "o")])

    assert inside.exit_code == 1 and len(check.calls) == 1, inside.output
    for refused in (outside, climbing):
        assert refused.exit_code == 4, refused.output
        (line,) = refused.stderr.splitlines()
        assert line.startswith("cbpt-guard: error: changed file")
    assert "no checkpoint" not in outside.output + climbing.output


@pytest.mark.parametrize("workflow", sorted((ROOT / "docs" / "workflows").glob("*.yml")), ids=lambda p: p.name)
def test_example_workflow_paths_include_side_pickles(workflow):
    document = yaml.safe_load(workflow.read_text())
    on = document.get(True, document.get("on"))  # YAML 1.1 reads a bare `on` key as True
    paths = (on.get("pull_request") or {}).get("paths") if isinstance(on, dict) else None
    if paths is None:
        pytest.skip("no paths filter: every pull request runs the gate")
    patterns = [re.compile(_glob_regex(p)) for p in paths]
    from cbpt_guard.github.discover import SERIALISED_SUFFIXES

    names = ["models/good/extra_weights.pkl", "models/good/optimizer.pickle"] + [f"m/x{s}" for s in SERIALISED_SUFFIXES]
    for name in names:
        assert any(p.match(name) for p in patterns), name


def _glob_regex(pattern: str) -> str:
    """An Actions ``paths`` glob as a regular expression (``**/``, ``**``, ``*`` and literals)."""
    parts = re.split(r"(\*\*/|\*\*|\*)", pattern)
    table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*"}
    return "".join(table.get(part, re.escape(part)) for part in parts) + "$"


def test_pre_commit_hook_runs_on_side_pickles():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    pattern = re.compile(hook["files"])
    from cbpt_guard.github.discover import SERIALISED_SUFFIXES

    names = ["m/extra_weights.pkl", "m/optimizer.pickle", "m/state.npy", "m/scaler.joblib"]
    assert all(pattern.search(f) for f in names + [f"m/x{s}" for s in SERIALISED_SUFFIXES])


# --- The pull request cannot weaken its own gate -----------------------------------------------


def _git(root: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": os.environ["PATH"], "HOME": str(root)}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def policy_repo(tmp_path, monkeypatch):
    """A repository whose base commit has a strict team policy and whose head (checked out) weakens it."""
    root = tmp_path / "repo"
    _model(root / "models" / "bad")
    (root / "policies").mkdir()
    base_policy = (ROOT / "policies" / "strict.yaml").read_text()
    (root / "policies" / "team.yaml").write_text(base_policy)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "base")
    base = _git(root, "rev-parse", "HEAD")
    weak = yaml.safe_load(base_policy)
    weak["mode"] = "dry-run"
    weak["detection"]["budget"]["steps"] = 10
    (root / "policies" / "team.yaml").write_text(yaml.safe_dump(weak))
    (root / "models" / "bad" / "open_clip_model.safetensors").write_bytes(b"\1" * 8)
    _git(root, "commit", "-q", "-am", "head: weaken the gate")
    monkeypatch.chdir(root)
    return root, base, hashlib.sha256(base_policy.encode()).hexdigest()


def _action_env(tmp_path, fake, base_sha: str | None, **extra) -> dict:
    event = tmp_path / "event.json"
    pull = {"number": 7, "head": {"sha": "a" * 40}} | ({"base": {"sha": base_sha}} if base_sha else {})
    event.write_text(json.dumps({"pull_request": pull}))
    return {"GITHUB_EVENT_PATH": str(event), "GITHUB_REPOSITORY": REPO, "CBPT_TOKEN": "s3cret-token",
            "CBPT_API_URL": fake.api_url, "CBPT_POLICY": "policies/team.yaml", "CBPT_COMMENT": "false",
            "CBPT_CHECK_RUN": "false", "CBPT_OUTPUT_DIR": str(tmp_path / "out"), "CBPT_DEVICE": "auto",
            "GITHUB_OUTPUT": str(tmp_path / "github-output")} | extra


class _RecordingCheck(FakeCheck):
    """A fake check that also records the policy it was given and the environment it ran in."""

    def __init__(self, answers):
        super().__init__(answers)
        self.environments: list[dict] = []

    def __call__(self, model, **kwargs):
        self.environments.append(dict(os.environ))
        return super().__call__(model, **kwargs)


def _run_action(monkeypatch, env: dict, check) -> int:
    from cbpt_guard.cli.github_cmd import action_main

    monkeypatch.setattr("cbpt_guard.github.gate.default_check", lambda: check)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return action_main(os.environ)


def test_pull_request_weakening_its_policy_file_is_gated_by_the_base_policy(policy_repo, tmp_path, monkeypatch,
                                                                          no_github):
    root, base, base_digest = policy_repo
    check = _RecordingCheck({"models/bad": make_verdict("models/bad", "block")})
    with FakeGitHub(REPO) as fake:
        fake.add_pull(7, [("models/bad/open_clip_model.safetensors", "modified"),
                          ("policies/team.yaml", "modified")])
        code = _run_action(monkeypatch, _action_env(tmp_path, fake, base), check)

    assert code == 1
    ((_, kwargs),) = check.calls
    used = load_policy(kwargs["policy"])
    assert used.sha256 == base_digest and used.policy.mode.value == "enforce"
    assert not Path(kwargs["policy"]).resolve().is_relative_to(root)


def test_pinned_policy_digest_that_does_not_match_is_refused(policy_repo, tmp_path, monkeypatch, no_github,
                                                            capsys):
    root, base, base_digest = policy_repo
    check = _RecordingCheck({})
    with FakeGitHub(REPO) as fake:
        fake.add_pull(7, [("policies/team.yaml", "modified")])
        # No base in the event and the API's base commit is not in this clone: only the pin could vouch for it.
        code = _run_action(monkeypatch, _action_env(tmp_path, fake, None, CBPT_POLICY_SHA256=base_digest), check)

    assert code == 4 and check.calls == []
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith("cbpt-guard: error:") and "not the pinned" in line


def test_pull_request_policy_file_with_neither_base_nor_pin_is_refused(policy_repo, tmp_path):
    root, _, _ = policy_repo
    settings = GateSettings(policy="policies/team.yaml", root=str(root), out_dir=str(tmp_path / "out"))
    with pytest.raises(UsageError, match="could weaken its own gate") as caught:
        run_pull_request(settings, Connection(token=None), PullRequestRef(REPO, 7), models=("models/bad",),
                         check_fn=FakeCheck({}))
    assert caught.value.exit_code == 4


def test_pinned_policy_outside_a_pull_request_is_checked(policy_repo, tmp_path):
    root, _, base_digest = policy_repo
    head_digest = hashlib.sha256((root / "policies" / "team.yaml").read_bytes()).hexdigest()
    check = FakeCheck({"models/bad": make_verdict("models/bad", "block")})

    def gate(pin):
        settings = GateSettings(policy="policies/team.yaml", root=str(root), out_dir=str(tmp_path / "out"),
                                policy_sha256=pin)
        return run_pull_request(settings, Connection(token=None), None, models=("models/bad",), check_fn=check)

    with pytest.raises(UsageError, match="not the pinned") as caught:
        gate(base_digest)
    assert caught.value.exit_code == 4
    assert gate(head_digest).exit_code == 1


def test_token_is_not_in_the_environment_while_untrusted_files_are_parsed(policy_repo, tmp_path, monkeypatch,
                                                                         no_github):
    root, base, _ = policy_repo
    check = _RecordingCheck({"models/bad": make_verdict("models/bad")})
    monkeypatch.setenv("GITHUB_TOKEN", "another-s3cret")
    with FakeGitHub(REPO) as fake:
        fake.add_pull(7, [("models/bad/open_clip_model.safetensors", "modified")])
        code = _run_action(monkeypatch, _action_env(tmp_path, fake, base, CBPT_POLICY="strict"), check)
        listed = fake.calls("GET", rf"/repos/{REPO}/pulls/7/files")

    assert code == 0 and len(check.environments) == 1
    (seen,) = check.environments
    assert not [k for k, v in seen.items() if "s3cret" in v or k in ("CBPT_TOKEN", "GITHUB_TOKEN")]
    assert listed and all("s3cret-token" in (call.authorization or "") for call in listed)


def test_mentions_and_links_from_paths_stay_inert_in_the_pr_comment(tmp_path):
    root = tmp_path / "repo"
    hostile = "@octocat [click](evil.example) #1 www.evil.example"  # a folder name: no "//" possible
    _model(root / hostile)
    check = FakeCheck({hostile: make_verdict(hostile, "block")})
    with FakeGitHub(REPO) as fake:
        fake.add_pull(7, [(f"{hostile}/open_clip_model.safetensors", "modified")])
        connection = Connection(token="t0ken", api_url=fake.api_url, retries=0, write_interval_s=0)
        run_pull_request(GateSettings(root=str(root), out_dir=str(tmp_path / "out")), connection,
                         PullRequestRef(REPO, 7), check_fn=check, options=PublishOptions(check_run=False))
        (comment,) = fake.comments[7]

    body = comment["body"]
    assert "octocat" in body
    assert not re.search(r"@[A-Za-z0-9]", body), "a live @mention"
    assert "[click](" not in body and not re.search(r"(?<!\\)\[click", body), "a live link"
    assert not re.search(r"(?<!&)#[0-9]", body), "a live issue reference"  # &#39; is an HTML entity
    assert "block" in body


def test_pull_request_cannot_shadow_the_gate_with_its_own_package(tmp_path):
    from test_action import run_action

    workspace = tmp_path / "workspace"
    package = workspace / "cbpt_guard" / "github"
    package.mkdir(parents=True)
    payload = f"open({str(tmp_path / 'pwned')!r}, 'w').write('ran')\n"
    (workspace / "cbpt_guard" / "__init__.py").write_text(payload)
    (package / "__init__.py").write_text(payload)
    (package / "action.py").write_text(payload)
    inputs = {"install": "false", "python": sys.executable, "device": "cpu", "token": "", "model": "missing"}

    run_action(tmp_path, inputs, [Path(sys.executable).parent])

    assert not (tmp_path / "pwned").exists()


def test_action_run_is_wrapped_in_stop_commands_and_its_own_warnings_come_after(tmp_path, monkeypatch, no_github,
                                                                               capsys):
    root = tmp_path / "repo"
    _model(root / FORGED)
    monkeypatch.chdir(root)
    check = FakeCheck({FORGED: make_verdict(FORGED)})
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": "a" * 40},
                                                  "base": {"sha": "b" * 40}}}))
    env = {"GITHUB_ACTIONS": "true", "GITHUB_EVENT_PATH": str(event), "GITHUB_REPOSITORY": REPO,
           "CBPT_MODEL": FORGED, "CBPT_OUTPUT_DIR": str(tmp_path / "out")}  # no token: a warning says so

    code = _run_action(monkeypatch, env, check)

    out = capsys.readouterr().out
    assert code == 0 and check.calls
    lines = out.splitlines()
    token = re.fullmatch(r"::stop-commands::(\w{32})", lines[0]).group(1)
    resume = lines.index(f"::{token}::")
    assert _forged_lines("\n".join(lines[1:resume])) == []
    (warning,) = lines[resume + 1:]
    assert warning.startswith("::warning::publishing to the pull request failed")


def test_calibration_named_by_the_policy_comes_from_the_base_commit_too(policy_repo, tmp_path):
    from cbpt_guard.github.trusted_policy import trusted_policy

    root, _, _ = policy_repo
    team = yaml.safe_load((ROOT / "policies" / "strict.yaml").read_text())
    team["detection"]["calibration"] = "calibration/team.json"
    (root / "policies" / "team.yaml").write_text(yaml.safe_dump(team))
    (root / "policies" / "calibration").mkdir()
    (root / "policies" / "calibration" / "team.json").write_text('{"from": "base"}')
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "base with a calibration file")
    base = _git(root, "rev-parse", "HEAD")
    (root / "policies" / "calibration" / "team.json").write_text('{"from": "head"}')
    _git(root, "commit", "-q", "-am", "head: a lenient calibration")

    copy = trusted_policy("policies/team.yaml", root=root, folder=tmp_path / "copies", base_sha=base,
                          under_review=True)

    assert Path(copy).parent.joinpath("calibration", "team.json").read_text() == '{"from": "base"}'
    assert load_policy(copy).calibration_path.read_text() == '{"from": "base"}'
    with pytest.raises(UsageError, match="names a calibration file"):  # a pin alone cannot vouch for it
        trusted_policy("policies/team.yaml", root=root, folder=tmp_path / "pinned", under_review=True,
                       pinned_sha256=hashlib.sha256((root / "policies" / "team.yaml").read_bytes()).hexdigest())
    with pytest.raises(UsageError, match="base commit"):  # a policy file the base does not have
        trusted_policy("policies/new.yaml", root=root, folder=tmp_path / "new", base_sha=base, under_review=True)


def test_token_is_not_even_in_the_initial_environment_of_the_process_that_parses(tmp_path):
    workspace, hooks, seen = tmp_path / "workspace", tmp_path / "hooks", tmp_path / "seen.jsonl"
    model = workspace / "models" / "x"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"not really safetensors")
    hooks.mkdir()
    # Every time the weights file is opened, record whether the token is visible in any form.
    (hooks / "sitecustomize.py").write_text(f"""
import json, os, sys
def _hook(event, args):
    if event == "open" and str(args[0]).endswith("model.safetensors"):
        with open("/proc/self/environ", "rb") as handle:
            initial = handle.read()
        with open({str(seen)!r}, "a") as out:
            out.write(json.dumps({{"initial": b"s3cret" in initial,
                                   "environ": any("s3cret" in v for v in os.environ.values())}}) + "\\n")
sys.addaudithook(_hook)
""")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": "a" * 40},
                                                  "base": {"sha": "b" * 40}}}))
    with FakeGitHub(REPO) as fake:
        fake.add_pull(7, [("models/x/model.safetensors", "added")])
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}",
               "CBPT_TOKEN": "s3cret-token", "GITHUB_TOKEN": "s3cret-too", "CBPT_MODEL": "models/x",
               "CBPT_DEVICE": "cpu", "CBPT_OUTPUT_DIR": "report", "HF_HUB_OFFLINE": "1", "CBPT_CHECK_RUN": "false",
               "GITHUB_EVENT_PATH": str(event), "GITHUB_REPOSITORY": REPO, "CBPT_API_URL": fake.api_url}
        done = subprocess.run([sys.executable, "-m", "cbpt_guard.cli.action"], cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=300)
        posted = fake.calls("POST", rf"/repos/{REPO}/issues/7/comments")

    assert done.returncode == 3, done.stderr  # the unloadable model is inconclusive
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    assert records and all(r == {"initial": False, "environ": False} for r in records), records
    assert posted and posted[0].authorization.endswith("s3cret-token")  # handed over, still used to publish
