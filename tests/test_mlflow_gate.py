"""examples/mlflow_gate.py against a real local MLflow server: a backdoored version is refused, a clean
one is promoted, and a version that fails a re-check loses its alias."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
# Starting the MLflow server (database migrations) alone takes 10-30 s on two shared cores.
pytestmark = pytest.mark.slow

from fake_github import make_verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load_example():
    spec = importlib.util.spec_from_file_location("mlflow_gate", EXAMPLES / "mlflow_gate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


gate = _load_example()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A local MLflow tracking and registry server (sqlite backend), stopped after the module."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        # The server runs uvicorn in a child process: stop the whole session it leads.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def client(mlflow_uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def _register(client, name: str, checkpoint: Path) -> str:
    """Log ``checkpoint`` as a run's artifacts and register it as a new version of ``name``."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered by an earlier test
    experiment = client.get_experiment_by_name("cbpt-guard-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("cbpt-guard-tests")
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/checkpoint",
                                          run_id=run.info.run_id)
    return str(version.version)


def truth_check(model, *, policy, out_dir, **_):
    """A stand-in for cbpt_guard.check that answers from the example's zoo_truth.json (seconds, not minutes)."""
    truth = json.loads((Path(model) / "zoo_truth.json").read_text())
    return make_verdict(str(model), "block" if truth["attack"] else "pass")


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def test_backdoored_version_is_refused_and_clean_version_promoted(client, mlflow_uri, tmp_path):
    name = "clip-stand-in"
    bad = _register(client, name, EXAMPLES / "backdoored")
    good = _register(client, name, EXAMPLES / "clean")

    refused = gate.gate_version(client, name, bad, tracking_uri=mlflow_uri, work_dir=tmp_path / "bad",
                                check=truth_check)
    assert (refused.decision, refused.exit_code, refused.promoted) == ("block", 1, False)
    assert _alias_version(client, name, "champion") is None

    promoted = gate.gate_version(client, name, good, tracking_uri=mlflow_uri, work_dir=tmp_path / "good",
                                 check=truth_check)
    assert (promoted.decision, promoted.exit_code, promoted.promoted) == ("pass", 0, True)
    assert _alias_version(client, name, "champion") == good

    tags = client.get_model_version(name, bad).tags
    assert tags["cbpt_guard.decision"] == "block" and tags["cbpt_guard.exit_code"] == "1"
    assert client.get_model_version(name, good).tags["cbpt_guard.decision"] == "pass"


def test_version_failing_a_recheck_loses_its_alias(client, mlflow_uri, tmp_path):
    name = "clip-recheck"
    bad = _register(client, name, EXAMPLES / "backdoored")
    client.set_registered_model_alias(name, "champion", bad)  # promoted before the gate existed

    result = gate.gate_version(client, name, bad, tracking_uri=mlflow_uri, work_dir=tmp_path, check=truth_check)

    assert not result.promoted
    assert _alias_version(client, name, "champion") is None


@pytest.mark.usefixtures("shared_detection")
def test_real_check_blocks_backdoored_and_promotes_clean_with_strict_policy(mlflow_uri, tmp_path):
    # The example's command line with the real cbpt_guard.check: a real detection per version (~55 s each), run
    # once per session with the other example tests (the shared_detection fixture).
    # A registry gate cannot deploy purified prompts in place of the version, so this policy is strict
    # with backdoor evidence blocking instead of purifying.
    from mlflow import MlflowClient

    policy = tmp_path / "registry-strict.yaml"
    strict = (Path(__file__).resolve().parents[1] / "policies" / "strict.yaml").read_text()
    assert "  on_backdoor: purify\n" in strict
    policy.write_text(strict.replace("  on_backdoor: purify\n", "  on_backdoor: block\n"))

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    name = "clip-real"
    bad = _register(client, name, EXAMPLES / "backdoored")
    good = _register(client, name, EXAMPLES / "clean")

    bad_code = gate.main(["--tracking-uri", mlflow_uri, "--name", name, "--version", bad, "--policy", str(policy),
                          "--work-dir", str(tmp_path / "bad")])
    good_code = gate.main(["--tracking-uri", mlflow_uri, "--name", name, "--version", good, "--policy", str(policy),
                           "--work-dir", str(tmp_path / "good")])

    bad_tags = client.get_model_version(name, bad).tags
    assert bad_tags["cbpt_guard.decision"] != "pass"
    assert (tmp_path / "bad" / "report" / "report.html").is_file()
    assert (good_code, client.get_model_version(name, good).tags["cbpt_guard.decision"]) == (0, "pass")
    assert _alias_version(client, name, "champion") == good
    assert bad_code == int(bad_tags["cbpt_guard.exit_code"])
