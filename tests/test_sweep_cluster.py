"""A sweep on a two-node Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``): work lands on both.

The nodes declare a GPU each, so the checks ask Ray for one (``sweep.gpus_per_model``) and are given it.

Each node has one CPU, so with four models to check and checks spread over
the cluster (``SPREAD``), neither node can take them all; the results record
the node each model's check ran on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # two raylets and their workers take tens of seconds to start on two cores

import cbpt_guard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle", "star"]
POLICY = """\
version: 1
mode: enforce
detection:
  budget: {steps: 20, batch_size: 16, time_limit_s: 600, targeted_classes: 1}
  families: [patch]
  calibration: tiny-cal.json
evidence: {on_backdoor: block, on_required_skipped: inconclusive, on_stage_failure: block}
export: {enabled: false}
"""


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and one worker node, one CPU each, and a driver connected to them."""
    from ray.cluster_utils import Cluster

    # Each node declares one GPU (Ray takes the count as given): checks then ask for one, as on a GPU cluster,
    # and Ray hands each its GPU id; torch finds no CUDA here, so the checks themselves run on the CPU.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)
    env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}}
    ray.init(address=cluster.address, runtime_env=env, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_sweep_on_two_nodes_runs_checks_on_both(two_nodes, tmp_path):
    import torch
    from tiny_models import build_tiny, save_open_clip_dir

    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.pipeline import detect_budget
    from cbpt_guard.policy import load_policy

    torch.set_num_threads(1)
    hub = tmp_path / "hub"
    for seed in range(4):
        model, config = build_tiny("vit", seed)
        (hub / f"m{seed}").mkdir(parents=True)
        save_open_clip_dir(model, config, hub / f"m{seed}", "safetensors", CLASSES)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    calibration = calibrate_models([hub / "m0"], budget=detect_budget(load_policy(policy)))
    (tmp_path / "tiny-cal.json").write_text(calibration.to_json())
    shutil.copytree(hub / "m0", hub / "m0-copy")

    result = cbpt_guard.sweep(hub, policy=policy, out_dir=tmp_path / "out")
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    ran_on = {r.name: r.node for r in result.results if r.status == "scanned"}
    assert set(ran_on) == {"m0", "m1", "m2", "m3"}
    assert set(ran_on.values()) == nodes  # checks ran on both nodes
    assert set(result.nodes) == nodes
    assert all(r.gpus == ("0",) for r in result.results if r.status == "scanned")  # one whole GPU per check
    assert all(r.action == "pass" for r in result.results) and result.exit_code == 0
