"""The Action's setup and tiers: a cached environment keyed on the lock, the CPU-only torch for CPU runs, a prebuilt
image instead of an install, and a quick intake-only scan.

action.yml is read with a YAML parser and its steps are run the way the runner runs a composite action's bash
steps (tests/test_action.py's harness); pip, venv and docker are stand-ins that record how they were called.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_action import ACTION, STEPS, _read_outputs, run_action

ROOT = Path(__file__).resolve().parents[1]
SETUP = '"$GITHUB_ACTION_PATH/scripts/action-setup.sh"'
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _step(step_id: str) -> dict:
    (step,) = [s for s in STEPS if s.get("id") == step_id]
    return step


def _stub_python(path: Path, log: Path) -> None:
    """A python that logs argv (less a leading -I, recorded apart), answers the interpreter query, makes venvs,
    and otherwise does nothing."""
    path.write_text(f"""#!{sys.executable}
import json, os, shutil, sys
with open({str(log)!r}, "a") as f:
    isolated = sys.argv[1:2] == ["-I"]
    args = sys.argv[2:] if isolated else sys.argv[1:]
    f.write(json.dumps({{"argv": args, "isolated": isolated, "exe": sys.argv[0]}}) + "\\n")
if args[:1] == ["-c"]:
    print("3.11.7 /opt/python/3.11.7/bin/python3.11")
elif args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"), exist_ok=True)
    shutil.copy(__file__, os.path.join(args[2], "bin", "python"))
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _action_copy(tmp_path: Path) -> Path:
    """The files the setup script reads, copied so a test may change them."""
    copy = tmp_path / "action"
    for name in ("pyproject.toml", "README.md"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for folder in ("cbpt_guard", "policies", "templates", "requirements", "scripts"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _setup(tmp_path: Path, command: str, action: Path, *, python: Path, path_dirs=(), **env) -> tuple[int, dict, str]:
    """Run ``action-setup.sh COMMAND`` as the plan or install step runs it; (exit code, outputs, stdout+stderr)."""
    output = tmp_path / f"{command}-output.txt"
    output.unlink(missing_ok=True)
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    base = {"PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"]), "HOME": str(tmp_path),
            "RUNNER_TEMP": str(runner_temp), "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64",
            "GITHUB_ACTION_PATH": str(action), "GITHUB_OUTPUT": str(output), "CBPT_INSTALL": "true",
            "CBPT_PYTHON": str(python), "CBPT_DEVICE": "cpu", "CBPT_IMAGE": ""}
    done = subprocess.run(["bash", str(action / "scripts" / "action-setup.sh"), command], env=base | env,
                          capture_output=True, text=True, timeout=120)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines()) if output.exists() else {}
    return done.returncode, outputs, done.stdout + done.stderr


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []


def _pip_installs(log: Path) -> list[list[str]]:
    return [argv[3:] for argv in _calls(log) if argv[:3] == ["-m", "pip", "install"]]


@pytest.fixture()
def stub(tmp_path):
    stubs, log = tmp_path / "stubs", tmp_path / "calls.jsonl"
    stubs.mkdir()
    _stub_python(stubs / "python3", log)
    return stubs / "python3", log


def test_action_steps_call_the_setup_script_and_install_nothing_inline():
    assert _step("plan")["run"].strip() == f"{SETUP} plan"
    assert _step("install")["run"].strip() == f"{SETUP} install"
    assert _step("gate")["run"].strip() == '"$GITHUB_ACTION_PATH/scripts/action-gate.sh"'
    assert not [s for s in STEPS if "pip" in s.get("run", "") or "venv" in s.get("run", "")]
    order = [s.get("id") for s in STEPS]
    assert order == ["plan", "restore", "install", "save", "gate"]


def test_cache_steps_restore_and_save_the_planned_venv_under_the_planned_key():
    restore, save = _step("restore"), _step("save")
    assert restore["uses"].startswith("actions/cache/restore@") and save["uses"].startswith("actions/cache/save@")
    assert restore["uses"].split("@")[1] == save["uses"].split("@")[1]
    for step in (restore, save):
        assert step["with"]["path"] == "${{ steps.plan.outputs.venv }}"
        assert step["with"]["key"] == "${{ steps.plan.outputs.key }}"
    assert restore["with"]["restore-keys"] == "${{ steps.plan.outputs.restore-prefix }}"
    assert restore["if"] == "steps.plan.outputs.cache == 'true'"
    assert save["if"] == "steps.install.outputs.save == 'true'"


def test_cache_key_includes_the_lock_file_hash_python_version_and_os(tmp_path, stub):
    python, _ = stub
    action = _action_copy(tmp_path)
    lock = action / "requirements" / "action-cpu.lock"

    code, plan, _ = _setup(tmp_path, "plan", action, python=python)
    assert code == 0 and plan["cache"] == "true" and plan["flavour"] == "cpu"
    assert hashlib.sha256(lock.read_bytes()).hexdigest()[:16] in plan["key"]
    assert plan["key"].startswith("cbpt-guard-Linux-X64-py3.11.7-cpu-")
    assert plan["key"].startswith(plan["restore-prefix"])

    lock.write_text(lock.read_text().replace("click==", "click==0"))
    _, changed, _ = _setup(tmp_path, "plan", action, python=python)
    assert changed["key"] != plan["key"] and changed["restore-prefix"] != plan["restore-prefix"]


@pytest.mark.parametrize("device, flavour, index", [("cpu", "cpu", CPU_INDEX), ("auto", "cpu", CPU_INDEX),
                                                    ("cuda", "gpu", None)])
def test_device_picks_the_torch_build_and_lock(tmp_path, stub, device, flavour, index):
    python, log = stub
    action = _action_copy(tmp_path)  # the runner here has no nvidia-smi: auto means CPU

    code, outputs, text = _setup(tmp_path, "install", action, python=python, CBPT_DEVICE=device)

    assert code == 0, text
    torch_call, lock_call, package_call = _pip_installs(log)
    assert torch_call[-2:] == ["torch==2.14.1", "torchvision==0.29.1"] and "--no-deps" in torch_call
    assert (torch_call[torch_call.index("--index-url") + 1] if "--index-url" in torch_call else None) == index
    assert lock_call[-2:] == ["-r", str(action / "requirements" / f"action-{flavour}.lock")]
    assert package_call[-1] == str(action) and "--no-deps" in package_call
    assert outputs["save"] == "true" and outputs["python"].endswith("cbpt-guard-venv/bin/python")


def test_a_restored_venv_skips_pip_and_a_changed_package_reinstalls_only_itself(tmp_path, stub):
    python, log = stub
    action = _action_copy(tmp_path)
    assert _setup(tmp_path, "install", action, python=python)[0] == 0
    first = len(_calls(log))

    code, outputs, text = _setup(tmp_path, "install", action, python=python)  # the venv, as a cache hit restores it
    assert code == 0 and outputs["save"] == "false" and "pip not run" in text
    assert len(_calls(log)) == first + 1  # the interpreter query, and nothing else

    (action / "cbpt_guard" / "__init__.py").write_text((action / "cbpt_guard" / "__init__.py").read_text() + "\n")
    code, outputs, _ = _setup(tmp_path, "install", action, python=python)  # a restore-keys match: older package
    assert code == 0 and outputs["save"] == "true"
    (package_call,) = _pip_installs(log)[3:]
    assert package_call[-1] == str(action) and "--no-deps" in package_call


def test_every_interpreter_the_setup_runs_is_isolated_from_the_checkout(tmp_path, stub):
    """The step runs in the pull request's checkout: without -I, `python -m pip` or `-m venv` would import a
    `pip/` or `venv.py` the pull request adds there."""
    python, log = stub
    action = _action_copy(tmp_path)
    assert _setup(tmp_path, "install", action, python=python)[0] == 0

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) >= 5  # the interpreter query, venv, torch, the lock, the package, pip check, --version
    assert [c["argv"][:2] for c in calls if not c["isolated"]] == []


def test_lock_files_pin_every_requirement_of_the_package_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for flavour, runtime in (("cpu", "cpu"), ("gpu", "gpu")):
        lines = [line for line in (ROOT / "requirements" / f"action-{flavour}.lock").read_text().splitlines()
                 if line and not line.startswith("#")]
        pins = dict(line.split("==") for line in lines)
        assert len(pins) == len(lines) and all(v and "*" not in v for v in pins.values())
        for text in [*project["dependencies"], *project["optional-dependencies"][runtime]]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if flavour == "gpu" and name == "onnxruntime":  # onnxruntime-gpu, the same module, takes its place
                assert "onnxruntime" not in pins and "onnxruntime-gpu" in pins
                continue
            assert name in pins, f"{name} missing from the {flavour} lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), (flavour, text, pins[name])
        cuda = [name for name in pins if name.startswith(("nvidia-", "cuda-", "triton"))]
        assert bool(cuda) == (flavour == "gpu")


def _stub_docker(path: Path, log: Path) -> None:
    path.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


IMAGE = "ghcr.io/acme/cbpt-guard@sha256:" + "ab" * 32


def test_image_input_runs_the_gate_in_the_image_with_inputs_by_name_only(tmp_path, stub):
    python, log = stub
    _stub_docker(python.parent / "docker", tmp_path / "docker.jsonl")
    hostile = "$(touch pwned1); --privileged -v /:/host"
    inputs = {"image": IMAGE, "model": hostile, "policy": hostile, "token": hostile, "device": "cpu",
              "install": "true", "python": "python3"}

    results = run_action(tmp_path, inputs, [python.parent])

    assert [(step, code) for step, code, _, _ in results] == [("plan", 0), ("install", 0), ("gate", 0)], results
    assert _calls(log) == []  # no venv, no pip, no interpreter at all
    (docker,) = [json.loads(line) for line in (tmp_path / "docker.jsonl").read_text().splitlines()]
    argv, workspace = docker["argv"], str(tmp_path / "workspace")
    assert argv[0] == "run" and argv[-5:] == ["python", IMAGE, "-I", "-m", "cbpt_guard.cli.action"]
    assert argv[argv.index("-w") + 1] == workspace and f"{workspace}:{workspace}" in argv
    assert not [a for a in argv if "pwned" in a or "privileged" in a]
    passed = {argv[i + 1] for i, a in enumerate(argv) if a == "-e"}
    assert {"CBPT_MODEL", "CBPT_POLICY", "CBPT_TOKEN", "CBPT_SCAN", "GITHUB_OUTPUT"} <= passed
    assert docker["env"]["CBPT_MODEL"] == hostile and "--gpus" not in argv
    assert not list(tmp_path.rglob("pwned1"))


@pytest.mark.parametrize("image", ["x; touch pwned", "--privileged", "Acme/Upper:1", "name:tag\nother"])
def test_a_malformed_image_reference_stops_the_plan(tmp_path, stub, image):
    python, log = stub
    code, outputs, text = _setup(tmp_path, "plan", ROOT, python=python, CBPT_IMAGE=image)
    assert code == 4 and "::error::cbpt-guard: the image input" in text and outputs == {}


def test_scan_reaches_the_gate_step_through_env():
    assert _step("gate")["env"]["CBPT_SCAN"] == "${{ inputs.scan }}"
    assert ACTION["inputs"]["scan"]["default"] == "full"


def _intake_env(tmp_path: Path, scan: str = "intake") -> dict:
    workspace = tmp_path / "workspace"
    (workspace / "models").mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "clean", workspace / "models" / "clean")
    return {"CBPT_SCAN": scan, "CBPT_MODEL": "models/clean", "CBPT_DEVICE": "cpu", "CBPT_TOKEN": "",
            "GITHUB_OUTPUT": str(tmp_path / "output.txt"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}


def _outputs(path: Path) -> dict:
    return _read_outputs(path)


def test_scan_intake_runs_only_the_safe_loading_checks(tmp_path, monkeypatch):
    from cbpt_guard.cli.github_cmd import action_main
    from cbpt_guard.github import gate

    def no_check():
        raise AssertionError("the full check ran under scan: intake")

    monkeypatch.setattr(gate, "default_check", no_check)
    env = _intake_env(tmp_path)
    monkeypatch.chdir(tmp_path / "workspace")

    code = action_main(env)

    outputs = _outputs(tmp_path / "output.txt")
    assert code == 0 and outputs["decision"] == "loadable" and outputs["exit-code"] == "0"
    report = json.loads((tmp_path / "workspace" / "cbpt-guard-report" / "models__clean" / "intake.json").read_text())
    assert report["checkpoint_sha256"] and report["parameter_count"] > 0
    assert not list((tmp_path / "workspace").rglob("verdict.json"))
    assert "backdoor detection not run" in (tmp_path / "summary.md").read_text()
    assert outputs["score"] == "" and outputs["verdicts"] == ""


class _Reduce:
    """An object whose pickle is "call ``function(*args)``"."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_scan_intake_blocks_an_unsafe_checkpoint(tmp_path, monkeypatch):
    from cbpt_guard.cli.github_cmd import action_main

    env = _intake_env(tmp_path)
    model = tmp_path / "workspace" / "models" / "evil"
    model.mkdir()
    shutil.copy2(ROOT / "examples" / "clean" / "open_clip_config.json", model)
    sentinel = tmp_path / "ran"
    # A pickle that would call os.system when loaded: intake must refuse it without loading it.
    evil = pickle.dumps(_Reduce(os.system, f"touch {sentinel}"), protocol=2)
    (model / "open_clip_pytorch_model.bin").write_bytes(evil)
    env["CBPT_MODEL"] = "models/evil"
    monkeypatch.chdir(tmp_path / "workspace")

    code = action_main(env)

    outputs = _outputs(tmp_path / "output.txt")
    assert code == 1 and outputs["decision"] == "block" and not sentinel.exists()
    assert "intake scan" in (tmp_path / "summary.md").read_text()


def test_an_unknown_scan_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from cbpt_guard.cli.github_cmd import action_main

    env = _intake_env(tmp_path, scan="quick")
    monkeypatch.chdir(tmp_path / "workspace")

    assert action_main(env) == 4
    assert "cbpt-guard: error: scan must be one of full, intake" in capsys.readouterr().err


def test_docs_hold_no_owner_placeholder_for_the_image():
    docs = (ROOT / "docs" / "docker.md").read_text() + (ROOT / "docs" / "github-action.md").read_text()
    assert "ghcr.io/OWNER" not in docs and "@sha256:" in docs


def test_push_and_pull_request_workflows_split_the_tiers():
    push = yaml.safe_load((ROOT / "docs" / "workflows" / "model-push-intake.yml").read_text())
    pull = yaml.safe_load((ROOT / "docs" / "workflows" / "model-pr-gate.yml").read_text())

    def guard(document):
        return next(s for job in document["jobs"].values() for s in job["steps"] if s.get("id") == "guard")

    assert "push" in push[True] and guard(push)["with"]["scan"] == "intake"
    assert "pull_request" in pull[True] and guard(pull)["with"].get("scan", "full") == "full"
