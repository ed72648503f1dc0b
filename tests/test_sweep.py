"""``cbpt-guard sweep`` on a local Ray of two CPUs: decisions, deduplication, exit code, dead workers, resuming.

One Ray session serves the whole module (starting Ray costs seconds). Its
workers run ``sweep_faults.install`` at start-up, which counts every check and
every detection run in a log and kills workers on request, so the tests can
count what was (re)scanned and kill a worker in the middle of a model.

The models are tiny random open_clip ViTs (tests/tiny_models.py) under a policy
whose detection budget is cheap (20 steps, the patch family) with a calibration
fitted on one of them at that budget: each is then a clean model whose
decision is a pass (measured scores 0.001-0.52 against a threshold of 0.9987),
so every decision below is known before the sweep runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray session and its workers take tens of seconds to start on two cores

from sweep_faults import read_log  # noqa: E402
from sweep_hub import tiny_hub  # noqa: E402

import cbpt_guard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_faults(tmp_path_factory):
    """A local Ray with two CPUs for the module; its workers count checks and take faults from the folder yielded."""
    faults = tmp_path_factory.mktemp("faults")
    env = {"worker_process_setup_hook": "sweep_faults.install",
           "env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "CBPT_SWEEP_FAULTS": str(faults),
                        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield faults, env
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Four tiny clean models (seeds 0-3) and the policy with its calibration fitted on seed 0 at its budget."""
    folder = tmp_path_factory.mktemp("tiny")
    return tiny_hub(folder, folder)


def _hub(tiny, root: Path) -> Path:
    """A folder of checkpoints: two clean models, a duplicate, a malicious pickle, a broken file, an unsupported one."""
    models, _ = tiny
    root.mkdir()
    shutil.copytree(models[0], root / "clean-a")
    shutil.copytree(models[0], root / "clean-a-copy")  # the same bytes under another name
    shutil.copytree(models[1], root / "clean-b")
    evil = root / "evil"
    shutil.copytree(models[2], evil)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {root / 'pwned'}",)

    (evil / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    broken = root / "team" / "broken"
    shutil.copytree(models[3], broken)
    weights = broken / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # truncated mid-tensor
    unsupported = root / "team" / "coca"
    shutil.copytree(models[1], unsupported)
    config = json.loads((unsupported / "open_clip_config.json").read_text())
    config["model_cfg"]["multimodal_cfg"] = {"width": 32, "heads": 2, "layers": 1}  # a captioning (CoCa) model
    (unsupported / "open_clip_config.json").write_text(json.dumps(config))
    return root


EXPECTED = {"clean-a": ("pass", 0), "clean-a-copy": ("pass", 0), "clean-b": ("pass", 0), "evil": ("block", 1),
            "team/broken": ("inconclusive", 3), "team/coca": ("inconclusive", 3)}


def _new_lines(faults: Path, since: int) -> list[str]:
    return read_log(faults)[since:]


def test_sweep_decides_every_model_scans_a_duplicate_once_and_exits_with_the_worst(ray_faults, tiny, tmp_path):
    faults, _ = ray_faults
    hub = _hub(tiny, tmp_path / "hub")
    start = len(read_log(faults))
    result = cbpt_guard.sweep(hub, policy=tiny[1], out_dir=tmp_path / "out")

    decisions = {r.name: (r.action, r.exit_code) for r in result.results}
    assert decisions == EXPECTED
    assert result.exit_code == 1  # the malicious pickle's block is the worst decision
    assert not (hub / "pwned").exists()
    by_name = {r.name: r for r in result.results}
    assert by_name["clean-a-copy"].status == "duplicate" and by_name["clean-a-copy"].duplicate_of == "clean-a"
    assert by_name["clean-a-copy"].digest == by_name["clean-a"].digest
    assert by_name["evil"].stage == "intake" and any("system" in r for r in by_name["evil"].reasons)
    assert by_name["team/coca"].stage == "intake" and "not supported" in " ".join(by_name["team/coca"].reasons)
    # one detection per distinct model that passed intake; the duplicate's bytes were never checked again
    lines = _new_lines(faults, start)
    assert sorted(line for line in lines if line.startswith("detect")) == ["detect clean-a", "detect clean-b"]
    assert "check clean-a-copy" not in lines
    assert [r.name for r in result.results][:1] == ["evil"]  # the blocked model first

    out = Path(result.out_dir)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["name"]: (row["action"], row["exit_code"]) for row in rows} == EXPECTED
    index = (out / "index.html").read_text()
    for r in result.results:
        if r.report:
            assert f'href="{r.report}"' in index and (out / r.report).is_file()
    assert "http://" not in index.replace("http://www.w3.org", "") and "<script src" not in index
    summary = (out / "summary.md").read_text()
    assert len(summary.encode()) < 64 * 1024 and summary.index("| evil |") < summary.index("| clean-a |")
    sarif = json.loads((out / "results.sarif").read_text())
    rules = {(res["ruleId"], res["message"]["text"].split(":")[0]) for res in sarif["runs"][0]["results"]}
    assert ("CBPT001", "evil") in rules and ("CBPT004", "team/broken") in rules


def test_a_second_sweep_reuses_the_store_and_checks_only_what_is_new(ray_faults, tiny, tmp_path):
    from click.testing import CliRunner

    from cbpt_guard.cli.main import cli

    faults, _ = ray_faults
    models, policy = tiny
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copytree(models[0], hub / "clean-a")
    first = cbpt_guard.sweep(hub, policy=policy, out_dir=tmp_path / "out")
    assert [r.status for r in first.results] == ["scanned"]
    shutil.copytree(models[1], hub / "clean-b")  # the hub grows
    start = len(read_log(faults))
    run = CliRunner().invoke(cli, ["sweep", str(hub), "--policy", str(policy), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert _new_lines(faults, start) == ["check clean-b", "detect clean-b"]
    rows = {json.loads(line)["name"]: json.loads(line)["status"]
            for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert rows == {"clean-a": "reused", "clean-b": "scanned"}


def test_a_worker_killed_mid_check_is_retried_on_another_worker_and_the_sweep_completes(ray_faults, tiny, tmp_path):
    faults, _ = ray_faults
    models, policy = tiny
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copytree(models[1], hub / "victim")
    shutil.copytree(models[0], hub / "bystander")
    (faults / "kill-once-victim").write_text("")
    start = len(read_log(faults))
    result = cbpt_guard.sweep(hub, policy=policy, out_dir=tmp_path / "out")
    killed = list(faults.glob("killed-victim-*"))
    assert len(killed) == 1  # the first attempt's worker really died, mid-check
    by_name = {r.name: r for r in result.results}
    assert (by_name["victim"].action, by_name["victim"].status, by_name["victim"].attempts) == ("pass", "scanned", 2)
    assert by_name["bystander"].action == "pass"
    lines = _new_lines(faults, start)
    assert lines.count("check victim") == 2 and lines.count("detect victim") == 1
    assert result.exit_code == 0


def test_a_model_whose_worker_dies_twice_fails_closed_and_the_sweep_goes_on(ray_faults, tiny, tmp_path):
    faults, _ = ray_faults
    models, policy = tiny
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copytree(models[2], hub / "doomed")
    shutil.copytree(models[0], hub / "fine")
    (faults / "kill-always-doomed").write_text("")
    try:
        result = cbpt_guard.sweep(hub, policy=policy, out_dir=tmp_path / "out")
    finally:
        (faults / "kill-always-doomed").unlink()
    by_name = {r.name: r for r in result.results}
    doomed = by_name["doomed"]
    # the policy's on_stage_failure is block: a model that could not be checked is never clean
    assert (doomed.status, doomed.action, doomed.exit_code, doomed.attempts) == ("failed", "block", 1, 2)
    assert "worker died twice" in doomed.reasons[0]
    assert by_name["fine"].action == "pass"
    assert result.exit_code == 1


def test_a_sweep_killed_with_sigkill_resumes_without_rescanning_what_finished(ray_faults, tiny, tmp_path):
    faults, env = ray_faults
    models, policy = tiny
    hub = tmp_path / "hub"
    hub.mkdir()
    for seed in range(4):
        shutil.copytree(models[seed], hub / f"m{seed}")
    (faults / "hold-m3").write_text("")  # m3's check waits until the sweep is killed: it can never finish
    (faults / "held-m3").write_text("")
    out = tmp_path / "out"
    start = len(read_log(faults))
    command = [sys.executable, "-c", "from cbpt_guard.cli.main import main; main()", "sweep", str(hub),
               "--policy", str(policy), "--out", str(out),
               "--address", ray.get_runtime_context().gcs_address, "--runtime-env", json.dumps(env)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            done = [d for d in (out / "store").glob("*") if (d / "entry.json").is_file()]
            if len(done) == 3 and "check m3" in _new_lines(faults, start):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        (faults / "hold-m3").unlink()
    finished = {json.loads((d / "entry.json").read_text())["name"] for d in (out / "store").glob("*")
                if (d / "entry.json").is_file()}
    assert finished == {"m0", "m1", "m2"}
    time.sleep(1)  # the held worker wakes, sees it was held, and dies without checking anything
    (faults / "held-m3").unlink()

    resumed_from = len(read_log(faults))
    result = cbpt_guard.sweep(hub, policy=policy, out_dir=out)
    lines = _new_lines(faults, resumed_from)
    assert lines == ["check m3", "detect m3"]  # one detection run: the one model that had not finished
    assert {r.name: r.status for r in result.results} == {"m0": "reused", "m1": "reused", "m2": "reused",
                                                         "m3": "scanned"}
    assert all(r.action == "pass" for r in result.results) and result.exit_code == 0
