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


# --- a registry without a server: sqlite in tmp_path, the same client calls ---------------------------------

@pytest.fixture
def sqlite_registry(tmp_path, monkeypatch):
    """A real MLflow tracking and model registry on a sqlite file, artifacts in tmp_path (no server)."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # anything MLflow would put in the current folder stays in tmp_path
    uri = f"sqlite:///{tmp_path}/registry.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment("cbpt-guard-tests", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, uri


def _purified_check(model, *, policy, out_dir, **_):
    """A stand-in for cbpt_guard.check that purifies: it writes the files a real purified run writes."""
    import verdict_samples as samples

    verdict = samples.backdoored_purified()
    out = Path(out_dir)
    for role in ("onnx", "prompts"):
        (out / verdict.artefacts[role]).parent.mkdir(parents=True, exist_ok=True)
        (out / verdict.artefacts[role]).write_bytes(f"{role} of the purified classifier".encode())
    (out / verdict.artefacts["verdict"]).write_text(verdict.to_json())
    return verdict


def _fixed_check(action: str):
    def check(model, *, policy, out_dir, **_):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return make_verdict(str(model), action)
    return check


def _artifact_names(client, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, gate.PURIFIED_ARTIFACT_PATH)}


def test_registry_gate_never_moves_the_alias_to_backdoored_weights(sqlite_registry, tmp_path):
    client, uri = sqlite_registry
    name = "clip-registry"
    clean, purified, blocked = (_register(client, name, EXAMPLES / folder)
                                for folder in ("clean", "backdoored", "backdoored"))

    passed = gate.gate_version(client, name, clean, tracking_uri=uri, work_dir=tmp_path / "clean",
                               check=_fixed_check("pass"))
    assert (passed.decision, passed.promoted_version, passed.purified_version) == ("pass", clean, None)
    assert _alias_version(client, name, "champion") == clean

    result = gate.gate_version(client, name, purified, tracking_uri=uri, work_dir=tmp_path / "purified",
                               check=_purified_check)
    new = result.purified_version
    assert (result.decision, result.exit_code, result.promoted) == ("purified", 0, True)
    assert new not in (None, purified, clean) and result.promoted_version == new
    assert _alias_version(client, name, "champion") == new  # the purified classifier, not the original weights
    registered = client.get_model_version(name, new)
    digest = client.get_model_version(name, purified).tags["cbpt_guard.checkpoint_sha256"]
    assert registered.tags["cbpt_guard.source_checkpoint_sha256"] == digest
    assert registered.tags["cbpt_guard.source_version"] == purified
    assert registered.tags["cbpt_guard.decision"] == "purified"
    assert _artifact_names(client, registered.run_id) == {"classifier.onnx", "prompts.safetensors", "verdict.json"}
    assert client.get_model_version(name, purified).tags["cbpt_guard.purified_version"] == new
    assert client.get_model_version(name, purified).tags["cbpt_guard.decision"] == "purified"

    refused = gate.gate_version(client, name, blocked, tracking_uri=uri, work_dir=tmp_path / "blocked",
                                check=_fixed_check("block"))
    assert (refused.promoted, refused.promoted_version, refused.purified_version) == (False, None, None)
    assert _alias_version(client, name, "champion") == new  # a block moves nothing

    # the alias never lands on original weights the gate did not pass as they are
    originals = {str(v.version) for v in client.search_model_versions(f"name='{name}'")
                 if v.tags.get("cbpt_guard.decision") in ("purified", "block") and str(v.version) != new}
    assert originals == {purified, blocked} and _alias_version(client, name, "champion") not in originals


def test_a_purified_version_that_held_the_alias_loses_it_to_its_purified_classifier(sqlite_registry, tmp_path):
    client, uri = sqlite_registry
    name = "clip-recheck-purified"
    original = _register(client, name, EXAMPLES / "backdoored")
    client.set_registered_model_alias(name, "champion", original)  # promoted before the gate existed

    result = gate.gate_version(client, name, original, tracking_uri=uri, work_dir=tmp_path, check=_purified_check)
    assert _alias_version(client, name, "champion") == result.purified_version != original


def test_a_purified_pass_without_an_onnx_export_registers_it_but_promotes_nothing(sqlite_registry, tmp_path):
    client, uri = sqlite_registry
    name = "clip-no-export"
    original = _register(client, name, EXAMPLES / "backdoored")

    def check(model, *, policy, out_dir, **kwargs):
        verdict = _purified_check(model, policy=policy, out_dir=out_dir, **kwargs)
        return verdict.model_copy(update={"export": None})

    result = gate.gate_version(client, name, original, tracking_uri=uri, work_dir=tmp_path, check=check)
    assert result.purified_version is not None and not result.promoted
    assert _alias_version(client, name, "champion") is None


def test_command_line_says_the_purified_classifier_was_promoted_not_the_original(sqlite_registry, tmp_path,
                                                                                   monkeypatch, capsys):
    client, uri = sqlite_registry
    name = "clip-cli"
    original = _register(client, name, EXAMPLES / "backdoored")
    monkeypatch.setattr("cbpt_guard.check", _purified_check)
    code = gate.main(["--tracking-uri", uri, "--name", name, "--version", original, "--work-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert (f"{name} version {original}: purified (exit 0), its purified classifier registered as version 2 and "
            "promoted to alias 'champion'; the original weights are not promoted") in out
