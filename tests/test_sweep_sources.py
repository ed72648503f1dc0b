"""The sweep without Ray: its sources, checkpoint identity, store, per-model budgets, reports and command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cbpt_guard.cli.main import cli
from cbpt_guard.errors import UsageError
from cbpt_guard.sweeper.records import ModelResult, StageCounts, SweepResult, worst_exit_code
from cbpt_guard.sweeper.sources import discover
from cbpt_guard.sweeper.store import ResultStore

CLASSES = ["circle", "square", "triangle", "star"]


def _model(folder: Path, payload: bytes = b"weights") -> Path:
    """A stand-in model directory: discovery reads bytes only, so no real weights are needed here."""
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(payload)
    return folder


def test_a_folder_tree_yields_model_directories_and_loose_checkpoints_each_identified_by_its_bytes(tmp_path):
    _model(tmp_path / "a")
    _model(tmp_path / "nested" / "b")
    _model(tmp_path / "nested" / "b-copy")
    _model(tmp_path / "c", b"other weights")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "model.pt").write_bytes(b"pickle?")
    (tmp_path / "notes.md").write_text("not a checkpoint")
    found = {c.name: c for c in discover([str(tmp_path)], staging=tmp_path / "staging")}
    assert sorted(found) == ["a", "c", "loose/model.pt", "nested/b", "nested/b-copy"]
    assert found["a"].digest == found["nested/b"].digest == found["nested/b-copy"].digest  # same bytes, one model
    assert found["c"].digest != found["a"].digest
    assert [f.path for f in found["a"].files] == ["open_clip_config.json", "open_clip_model.safetensors"]


def test_a_hub_mirror_names_each_revision_org_name_at_revision(tmp_path):
    _model(tmp_path / "acme" / "clip-b32" / "main")
    _model(tmp_path / "acme" / "clip-b32" / "v2", b"v2")
    (tmp_path / "acme" / "empty" / "r1").mkdir(parents=True)  # nothing scannable: still a candidate (inconclusive)
    found = discover([f"hub:{tmp_path}"], staging=tmp_path / "staging")
    assert [(c.name, c.source) for c in found] == [("acme/clip-b32@main", "hub"), ("acme/clip-b32@v2", "hub"),
                                                   ("acme/empty@r1", "hub")]


def test_a_list_file_names_checkpoints_relative_to_itself_and_a_missing_one_is_a_usage_error(tmp_path):
    _model(tmp_path / "models" / "a")
    listing = tmp_path / "models.txt"
    listing.write_text("# production models\nmodels/a\n\n")
    assert [c.name for c in discover([str(listing)], staging=tmp_path / "s")] == ["models/a"]
    assert [c.name for c in discover([f"list:{listing}"], staging=tmp_path / "s")] == ["models/a"]
    listing.write_text("models/a\nmodels/gone\n")
    with pytest.raises(UsageError, match="models.txt:2: 'models/gone' does not exist"):
        discover([str(listing)], staging=tmp_path / "s")
    with pytest.raises(UsageError, match="does not exist"):
        discover([str(tmp_path / "nowhere")], staging=tmp_path / "s")


def test_every_version_of_an_mlflow_registered_model_is_downloaded_and_identified(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("clip-prod")
    for payload in (b"one", b"two"):
        checkpoint = _model(tmp_path / "logged" / payload.decode(), payload)
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
        client.create_model_version("clip-prod", source=f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
    client.set_registered_model_alias("clip-prod", "champion", "2")

    everything = discover([f"mlflow:{uri}"], staging=tmp_path / "staging")
    assert [(c.name, c.source) for c in everything] == [("clip-prod/1", "mlflow"), ("clip-prod/2", "mlflow")]
    assert everything[0].digest != everything[1].digest
    assert (Path(everything[1].path) / "open_clip_model.safetensors").read_bytes() == b"two"
    alias = discover(["models:/clip-prod@champion"], staging=tmp_path / "staging", tracking_uri=uri)
    assert [(c.name, c.digest) for c in alias] == [("clip-prod/2", everything[1].digest)]
    with pytest.raises(UsageError, match="no MLflow tracking URI"):
        discover(["models:/clip-prod"], staging=tmp_path / "staging")


def test_the_store_keeps_whole_entries_only_and_drops_what_a_killed_sweep_left_half_written(tmp_path):
    store = ResultStore(tmp_path / "store")
    store.put("k1", {"status": "scanned"}, {"report.html": b"<html>", "purified/prompts.safetensors": b"x"})
    assert store.get("k1") == {"status": "scanned"}
    assert (tmp_path / "store" / "k1" / "purified" / "prompts.safetensors").read_bytes() == b"x"
    half = tmp_path / "store" / ".partial-k2-0000"  # what a SIGKILL during a write leaves
    half.mkdir()
    (half / "report.html").write_text("half")
    reopened = ResultStore(tmp_path / "store")
    assert reopened.get("k2") is None and not half.exists()
    with pytest.raises(ValueError, match="leaves"):
        store.put("k3", {}, {"../escape": b"x"})


def test_the_worst_exit_code_ranks_block_over_error_over_inconclusive_over_pass():
    assert worst_exit_code([0, 3, 1, 2]) == 1
    assert worst_exit_code([0, 3, 2]) == 2
    assert worst_exit_code([0, 3, 0]) == 3
    assert worst_exit_code([0, 0]) == 0
    assert worst_exit_code([]) == 3  # nothing judged is never a pass


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random open_clip ViT and a policy whose calibration is fitted at its cheap budget."""
    import torch
    from sweep_hub import POLICY
    from tiny_models import build_tiny, save_open_clip_dir

    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.pipeline import detect_budget
    from cbpt_guard.policy import load_policy

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny")
    model, config = build_tiny("vit", 0)
    path = save_open_clip_dir(model, config, folder / "vit", "safetensors", CLASSES)
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    (folder / "tiny-cal.json").write_text(calibrate_models([path], budget=detect_budget(load_policy(policy))).to_json())
    return path, policy


@pytest.mark.parametrize("budget, why", [({"time_budget_s": 0.05}, "time budget of 0.05 s"),
                                         ({"memory_budget_mb": 64}, "memory budget of 64 MB")])
def test_a_check_over_its_budget_is_stopped_and_reported_not_judged(tiny_model, budget, why):
    from cbpt_guard.sweeper.tasks import CheckOptions, check_model

    path, policy = tiny_model
    outcome = check_model("d" * 64, str(path), CheckOptions(policy=str(policy), **budget))
    assert outcome.kind == "budget" and why in outcome.reason and outcome.verdict_json is None
    unlimited = check_model("d" * 64, str(path), CheckOptions(policy=str(policy)))
    assert unlimited.kind == "checked" and json.loads(unlimited.verdict_json)["decision"]["action"] == "pass"
    assert "report.html" in unlimited.files


def _result(name: str, action: str, code: int) -> ModelResult:
    return ModelResult(name=name, path=f"/hub/{name}", source="folder", digest=name.encode().hex().ljust(64, "0"),
                       status="scanned", stage="detection", action=action, enforced=action, exit_code=code,
                       reasons=(f"why {name}",), report=None)


def test_the_summary_lists_blocked_models_first_and_stays_under_64_kb_for_any_number_of_models():
    from cbpt_guard.sweeper.report import render_index, render_summary

    results = tuple([_result("evil<script>", "block", 1)] + [_result(f"m{i:05d}", "pass", 0) for i in range(5000)])
    sweep = SweepResult(results=results, exit_code=1, out_dir="/out", policy="strict", policy_sha256="a" * 64,
                        scanned=5001, reused=0, failed=0, wall_s=1.0)
    summary = render_summary(sweep)
    assert len(summary.encode()) < 64 * 1024
    assert summary.index("evil") < summary.index("m00000")
    assert "more models (none worse than those above) are listed in results.jsonl" in summary
    index = render_index(sweep)
    assert "evil&lt;script&gt;" in index and "evil<script>" not in index
    assert index.count("<tr>") == 5002


def test_progress_is_one_rewritten_bar_on_a_terminal_and_plain_lines_in_ci():
    import io

    from cbpt_guard.cli.sweep_cmd import SweepPrinter

    def counts(intake: int, detection: int) -> StageCounts:
        return StageCounts(candidates=10, unique=8, reused=0, intake_done=intake, intake_total=8,
                           detection_done=detection, detection_total=6, failed=0, elapsed_s=5.0, eta_s=30.0)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Tty()
    printer = SweepPrinter(terminal)
    printer(counts(4, 0))
    printer(counts(8, 3))
    printer.close()
    assert terminal.getvalue().count("\r[") == 2 and "intake 8/8, detection 3/6" in terminal.getvalue()
    assert "ETA 30 s" in terminal.getvalue()
    log = io.StringIO()
    printer = SweepPrinter(log)
    for step in range(8):
        printer(counts(step, 0))
    printer(counts(8, 6))
    printer.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2  # the first counts, then (at close) the last
    assert "intake 8/8, detection 6/6" in lines[-1]


def test_sweep_without_ray_says_how_to_install_it_and_exits_4(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    _model(tmp_path / "hub" / "a")
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "hub"), "--policy", "strict", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 4
    assert "pip install 'cbpt-guard[sweep]'" in result.stderr


def test_sweep_refuses_an_output_folder_that_is_not_a_sweeps_before_any_work(tmp_path):
    _model(tmp_path / "hub" / "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "hub"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 4 and "neither empty nor an earlier sweep's folder" in result.stderr
    missing = CliRunner().invoke(cli, ["sweep", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")])
    assert missing.exit_code == 4 and "does not exist" in missing.stderr
    bad_policy = CliRunner().invoke(cli, ["sweep", str(tmp_path / "hub"), "--out", str(tmp_path / "new"),
                                          "--policy", str(tmp_path / "none.yaml")])
    assert bad_policy.exit_code == 4


def test_help_lists_sweep_and_loads_neither_torch_nor_ray():
    import subprocess

    code = ("import sys; from cbpt_guard.cli.main import main\n"
            "try:\n    main(['sweep', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "hub:DIR" in out.stdout and out.stdout.strip().endswith("False False")


def test_the_kuberay_job_and_the_registry_workflow_call_the_sweep_with_options_it_accepts():
    import re
    import shlex

    import yaml

    from cbpt_guard.cli.sweep_cmd import sweep_command

    docs = Path(__file__).resolve().parents[1] / "docs" / "sweep"
    job = yaml.safe_load((docs / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"] == "1"
    workflow = yaml.safe_load((docs / "registry-sweep.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert all(re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", s["uses"]) for s in steps if "uses" in s)
    assert not [s for s in steps if "${{" in s.get("run", "")]  # secrets reach the command through env only
    assert all(s["if"].startswith("always()") for s in steps if "upload" in s.get("uses", ""))
    commands = [job["spec"]["entrypoint"]] + [s["run"] for s in steps if "cbpt-guard sweep" in s.get("run", "")]
    assert len(commands) == 2
    for command in commands:
        args = shlex.split(command)
        assert args[:2] == ["cbpt-guard", "sweep"]
        context = sweep_command.make_context("sweep", args[2:])  # raises on an unknown option
        assert context.params["out_dir"] and context.params["sources"]


def test_the_policy_sets_each_checks_gpu_share_and_budgets_and_rejects_impossible_ones(tmp_path):
    from sweep_hub import POLICY

    from cbpt_guard.policy import load_policy
    from cbpt_guard.policy.schema import PolicyError

    (tmp_path / "tiny-cal.json").write_text("{}")
    path = tmp_path / "p.yaml"
    path.write_text(POLICY + "sweep: {gpus_per_model: 0.25, time_budget_s: 60, memory_budget_mb: 2048}\n")
    settings = load_policy(path).policy.sweep
    assert (settings.gpus_per_model, settings.time_budget_s, settings.memory_budget_mb) == (0.25, 60.0, 2048)
    path.write_text(POLICY + "sweep: {gpus_per_model: 0}\n")
    with pytest.raises(PolicyError, match="gpus_per_model"):
        load_policy(path)


def test_a_sweep_that_finds_nothing_is_inconclusive_and_still_writes_its_report(tmp_path):
    pytest.importorskip("ray")
    import cbpt_guard

    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "README.md").write_text("no checkpoints here")
    result = cbpt_guard.sweep(tmp_path / "hub", policy="strict", out_dir=tmp_path / "out")
    assert result.results == () and result.exit_code == 3  # nothing judged is never a pass
    assert "exit 3" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(UsageError, match="unknown mode"):
        cbpt_guard.sweep(tmp_path / "hub", policy="strict", out_dir=tmp_path / "out", mode="lenient")
