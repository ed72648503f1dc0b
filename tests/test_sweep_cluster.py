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

from sweep_hub import tiny_hub  # noqa: E402

import cbpt_guard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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
    hub = tmp_path / "hub"
    _, policy = tiny_hub(hub, tmp_path, name="m{seed}")
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
