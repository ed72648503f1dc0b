"""action.yml: inputs reach the shell only through env, and hostile input values run nothing.

The action's steps are run here the way the Actions runner runs a composite
action's bash steps: the step's ``env:`` expressions are evaluated to plain
values (no shell involved), the ``run:`` script is written to a file and run
with ``bash --noprofile --norc -eo pipefail``, and step outputs are read back
from ``$GITHUB_OUTPUT`` for the next step's expressions.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
STEPS = ACTION["runs"]["steps"]

HOSTILE = [
    "$(touch pwned1)",
    "`touch pwned2`",
    "; touch pwned3",
    "x\ntouch pwned4\n$(touch pwned5)",
    "' ; touch pwned6 ; '",
    '" ; touch pwned7 ; "',
    "${IFS}touch${IFS}pwned8",
    "--token=$(touch pwned9)",
]
_EXPRESSION = re.compile(r"^\$\{\{\s*(inputs\.[A-Za-z0-9_-]+|steps\.[a-z]+\.outputs\.[A-Za-z0-9_-]+)\s*\}\}$")


def test_no_run_script_contains_an_expression():
    scripts = [step["run"] for step in STEPS if "run" in step]
    assert scripts, "the action has no run steps"
    assert not [s for s in scripts if "${{" in s]


def test_every_input_reaches_the_steps_through_env_only():
    used = set()
    for step in STEPS:
        assert "uses" in step or step.get("shell") == "bash"
        for name, value in (step.get("env") or {}).items():
            value = str(value)
            if "${{" in value:
                match = _EXPRESSION.match(value)
                assert match, f"env {name} is not one plain expression: {value!r}"
                used.add(match.group(1))
    assert {f"inputs.{name}" for name in ACTION["inputs"]} <= used


def test_actions_used_are_pinned_to_full_commit_shas():
    for step in STEPS:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def test_outputs_come_from_the_gate_step():
    for name, spec in ACTION["outputs"].items():
        assert spec["value"] == f"${{{{ steps.gate.outputs.{name} }}}}"


def _stub(path: Path, log: Path) -> None:
    """An executable that logs its argv (less a leading -I, recorded apart) and CBPT_* environment;
    ``-m venv DIR`` makes DIR/bin/python a copy."""
    path.write_text(f"""#!{sys.executable}
import json, os, shutil, sys
env = {{k: v for k, v in os.environ.items() if k.startswith("CBPT_")}}
isolated = sys.argv[1:2] == ["-I"]
args = sys.argv[2:] if isolated else sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": args, "isolated": isolated, "env": env}}) + "\\n")
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"), exist_ok=True)
    shutil.copy(__file__, os.path.join(args[2], "bin", "python"))
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _evaluate(value: str, inputs: dict, outputs: dict) -> str:
    """A step env value as the runner evaluates it (only the expression forms the action uses)."""
    match = _EXPRESSION.match(str(value))
    if not match:
        return str(value)
    reference = match.group(1)
    if reference.startswith("inputs."):
        name = reference.removeprefix("inputs.")
        return inputs.get(name, str(ACTION["inputs"][name].get("default", "")))
    _, step_id, _, name = reference.split(".")
    return outputs.get(step_id, {}).get(name, "")


def _read_outputs(path: Path) -> dict:
    values, lines = {}, iter(path.read_text().splitlines() if path.exists() else [])
    for line in lines:
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            values[name] = "\n".join(body)
        else:
            name, _, value = line.partition("=")
            values[name] = value
    return values


def run_action(tmp: Path, inputs: dict, path_dirs: list[Path]) -> list[tuple[str, int, dict, str]]:
    """Run the action's steps in order, stopping at the first failure; (step id, exit code, outputs, stderr) each."""
    workspace, runner_temp = tmp / "workspace", tmp / "runner-temp"
    workspace.mkdir(exist_ok=True)
    runner_temp.mkdir(exist_ok=True)
    outputs: dict[str, dict] = {}
    results = []
    for index, step in enumerate(STEPS):
        if "uses" in step:
            continue  # the cache steps: skipped, as on a runner whose cache is empty (a miss)
        script = tmp / f"step{index}.sh"
        script.write_text(step["run"])
        output_file = tmp / f"output{index}.txt"
        env = {"PATH": os.pathsep.join([str(d) for d in path_dirs] + ["/usr/bin", "/bin"]),
               "HOME": str(tmp), "RUNNER_TEMP": str(runner_temp), "GITHUB_ACTION_PATH": str(ROOT),
               "GITHUB_WORKSPACE": str(workspace), "GITHUB_OUTPUT": str(output_file),
               "GITHUB_STEP_SUMMARY": str(tmp / "summary.md"), "GITHUB_REPOSITORY": "acme/models"}
        env |= {name: _evaluate(value, inputs, outputs) for name, value in (step.get("env") or {}).items()}
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                              env=env, capture_output=True, text=True, timeout=120)
        outputs[step.get("id", str(index))] = _read_outputs(output_file)
        results.append((step.get("id"), done.returncode, outputs[step.get("id", str(index))], done.stderr))
        if done.returncode != 0:
            break
    return results


def _pwned(tmp: Path) -> list[Path]:
    """Files a `touch pwnedN` would have made, anywhere under the test folder or in the current directory."""
    candidates = list(tmp.rglob("*")) + list(Path.cwd().iterdir())
    return sorted(p for p in candidates if re.fullmatch(r"pwned\d*", p.name))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_inputs_reach_the_entry_point_verbatim_and_run_nothing(tmp_path, hostile):
    stubs, log = tmp_path / "stubs", tmp_path / "calls.jsonl"
    stubs.mkdir()
    _stub(stubs / "python3", log)
    inputs = {name: hostile for name in ("model", "policy", "mode", "probes", "data", "classes", "output-dir",
                                         "purify", "export", "token", "api-url", "comment", "check-run", "seed")}
    inputs |= {"device": "cpu", "install": "true", "python": "python3"}

    results = run_action(tmp_path, inputs, [stubs])

    assert [code for _, code, _, _ in results] == [0, 0, 0], results
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["-m", "venv", str(tmp_path / "runner-temp" / "cbpt-guard-venv")] in [c["argv"] for c in calls]
    assert any(c["argv"][-1] == str(ROOT) and "--no-deps" in c["argv"] for c in calls)
    entry = calls[-1]
    assert entry["argv"] == ["-m", "cbpt_guard.cli.action"] and entry["isolated"]
    assert entry["env"]["CBPT_MODEL"] == hostile and entry["env"]["CBPT_OUTPUT_DIR"] == hostile
    assert entry["env"]["CBPT_TOKEN"] == hostile and entry["env"]["CBPT_API_URL"] == hostile
    assert [entry["env"][f"CBPT_{name}"] for name in ("PROBES", "DATA", "CLASSES")] == [hostile] * 3
    assert _pwned(tmp_path) == []


@pytest.mark.parametrize("field", ["device", "install", "python"])
def test_hostile_install_settings_fail_the_step_and_run_nothing(tmp_path, field):
    stubs, log = tmp_path / "stubs", tmp_path / "calls.jsonl"
    stubs.mkdir()
    _stub(stubs / "python3", log)
    inputs = {"device": "cpu", "install": "true", "python": "python3"} | {field: "cpu; touch pwned $(touch pwned2)"}

    results = run_action(tmp_path, inputs, [stubs])

    assert results[0][1] != 0 and len(results) == 1
    assert not log.exists() or "cbpt_guard.cli.action" not in log.read_text()
    assert _pwned(tmp_path) == []


HOSTILE_PATH = "models/a\n$(touch pwned1)`touch pwned2`; touch pwned3"


def _real_entry(tmp_path, **changes):
    """Run the action with install: false, so the real cbpt_guard.cli.action runs (no stubs at all)."""
    model = tmp_path / "workspace" / "models" / "x"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"not really safetensors")
    inputs = {"install": "false", "python": sys.executable, "device": "cpu", "token": "", "model": "models/x",
              "policy": "strict"} | changes
    return run_action(tmp_path, inputs, [Path(sys.executable).parent])[-1]


@pytest.mark.parametrize("field, complaint", [("model", "model path"), ("policy", "policy"), ("mode", "mode must be"),
                                             ("purify", "CBPT_PURIFY"), ("seed", "CBPT_SEED"),
                                             ("probes", "the probes folder"), ("data", "the data folder"),
                                             ("classes", "the classes file")])
def test_real_entry_point_refuses_hostile_values_with_a_usage_error(tmp_path, field, complaint):
    step, code, outputs, stderr = _real_entry(tmp_path, **{field: HOSTILE_PATH})

    assert step == "gate" and code == 4, stderr
    assert outputs["decision"] == "error" and outputs["exit-code"] == "4"
    assert "cbpt-guard: error:" in stderr and complaint in stderr
    assert _pwned(tmp_path) == []


@pytest.mark.parametrize("field", ["probes", "data", "classes"])
def test_real_entry_point_stops_on_a_missing_data_path_before_checking_anything(tmp_path, field):
    step, code, outputs, stderr = _real_entry(tmp_path, **{field: "data/missing"})

    assert (step, code, outputs["exit-code"]) == ("gate", 4, "4"), stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("cbpt-guard: error:")]
    assert f"the {field} " in error and "'data/missing' does not exist" in error
    assert not (tmp_path / "workspace" / "cbpt-guard-report" / "models__x").exists()


def test_real_entry_point_hands_the_data_paths_to_the_check(tmp_path):
    data = tmp_path / "workspace" / "data"
    (data / "probes").mkdir(parents=True)
    (data / "fewshot" / "cat").mkdir(parents=True)
    (data / "classes.txt").write_text("cat\ndog\n")

    step, code, outputs, stderr = _real_entry(tmp_path, probes="data/probes", data="data/fewshot",
                                              classes="data/classes.txt")

    # The (unloadable) model is inconclusive; the Verdict still records the data the check was given, and as
    # its tier what was really loaded: nothing, since intake stopped before the images were read.
    assert step == "gate" and code == 3, stderr
    verdict = json.loads((tmp_path / "workspace" / "cbpt-guard-report" / "models__x" / "verdict.json").read_text())
    assert verdict["data"]["tier"] == "zero-data"
    assert (verdict["data"]["probes"], verdict["data"]["labelled"]) == ("data/probes", "data/fewshot")


def test_real_entry_point_takes_a_hostile_output_folder_as_a_plain_name(tmp_path):
    # The (unloadable) model is checked for real: inconclusive, exit 3, reports under the odd folder name.
    step, code, outputs, stderr = _real_entry(tmp_path, **{"output-dir": HOSTILE_PATH})

    assert step == "gate" and code == 3, stderr
    assert outputs["decision"] == "inconclusive"
    assert (tmp_path / "workspace" / HOSTILE_PATH / "models__x" / "report.html").is_file()
    assert _pwned(tmp_path) == []


@pytest.mark.parametrize("workflow", sorted((ROOT / "docs" / "workflows").glob("*.yml")), ids=lambda p: p.name)
def test_example_workflows_pin_actions_and_upload_reports_even_on_failure(workflow):
    document = yaml.safe_load(workflow.read_text())
    steps = [step for job in document["jobs"].values() for step in job["steps"]]
    uses = [step["uses"] for step in steps if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", u) for u in uses), uses
    assert not [step for step in steps if "${{" in step.get("run", "")]
    uploads = [step for step in steps if "upload" in step.get("uses", "")]
    assert uploads and all(step["if"].startswith("always()") for step in uploads)
    gate = next(step for step in steps if step.get("id") == "guard")
    assert set(gate.get("with", {})) <= set(ACTION["inputs"])


def test_pre_commit_hook_runs_the_changed_command_on_checkpoint_files():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["language"] == "python" and hook["entry"] == "cbpt-guard github changed"
    pattern = re.compile(hook["files"])
    assert all(pattern.search(f) for f in ["m/open_clip_config.json", "m/config.json", "w.safetensors", "a/b.ckpt",
                                           "x.pt", "x.pth", "x.bin", "m/cbpt_manifest.json"])
    assert not any(pattern.search(f) for f in ["README.md", "myconfig.json", "x.bin.txt", "notes.pt.md"])
