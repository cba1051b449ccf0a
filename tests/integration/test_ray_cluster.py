"""``fedguard simulate --ray-address``: a run attached to a two-node Ray cluster on this machine (issue 15, point 2).

The cluster is what a researcher starts by hand (``ray start --head``, then
``ray start --address`` on a second node), here both nodes with one CPU
each. With one CPU per site, Flower's pool then holds one site actor per
node, so a run that completes used both; each node's own worker logs show
the site actor it hosted. A request no node can place (two CPUs per site)
is refused at once, naming what the cluster has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.ray_processes import ray_tmpdir
from tests.ray_cluster import RayCluster, short_tmpdir

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[RayCluster]:
    cluster = RayCluster(short_tmpdir("fgrc-"))
    try:
        cluster.start_head(cpus=1)
        cluster.add_node(cpus=1)
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()
    assert cluster.processes() == []


def simulate(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDGUARD_", "RAY_"))}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return subprocess.run([sys.executable, "-m", "fedguard.cli", "simulate", *args], env=env, capture_output=True,
                          text=True, timeout=540, check=False, cwd=Path(__file__).parents[2])


def hosted_site_actor(node_root: Path) -> bool:
    """Whether a worker of this node's session hosted a Flower site actor (Ray tags its log with the actor)."""
    return any(":actor_name:ClientAppActor" in log.read_text(errors="replace")
               for log in node_root.glob("ray/session_*/logs/worker-*.out"))


def test_a_run_attached_with_ray_address_places_its_sites_on_both_nodes(
    two_nodes: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    result = simulate(home, "--sites", "3", "--rounds", "1", "--watermark", "none", "--ray-address",
                      two_nodes.address, "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["model"] == "breast-cancer" and outcome["version"] == 1
    cluster = outcome["ray_cluster"]
    assert (cluster["address"], len(cluster["nodes"]), cluster["cpus"]) == (two_nodes.address, 2, 2.0)
    assert f"attached to the Ray cluster at {two_nodes.address}: 2 nodes, 2 CPUs, 0 GPUs" in result.stderr
    assert hosted_site_actor(two_nodes.root) and hosted_site_actor(two_nodes.root / "node-1")
    monkeypatch.delenv("RAY_TMPDIR", raising=False)  # the run's own default, as its environment had none
    assert not ray_tmpdir(home).exists()  # no local Ray of its own, no cleanup of a cluster it does not own
    assert len(two_nodes.processes()) >= 4  # the cluster outlives the run: gcs, raylets, agents


def test_sites_no_node_can_place_are_refused_before_any_training(two_nodes: RayCluster, tmp_path: Path) -> None:
    result = simulate(tmp_path / "home", "--sites", "3", "--rounds", "1", "--cpus-per-site", "2",
                      "--ray-address", two_nodes.address)
    assert result.returncode == 2, result.stderr[-4000:]
    assert (f"the Ray cluster at {two_nodes.address} cannot place one site asking --cpus-per-site 2 "
            "--gpus-per-site 0: its nodes offer 1 CPU/0 GPU, 1 CPU/0 GPU (2 CPUs, 0 GPUs in all)") in result.stderr
    assert "round 1/1" not in result.stdout + result.stderr
