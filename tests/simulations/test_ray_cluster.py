"""Attaching to a Ray cluster, without one: the address, the sites' environment, the refusals (issue 15, point 2)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from simulations.federation import SimulationConfig
from simulations.ray_cluster import (
    Cluster,
    ClusterNode,
    check_placement,
    check_reachable,
    cluster_address,
    site_environment,
)


def test_the_flag_wins_over_ray_address_and_neither_means_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address("") == ""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address("") == "10.0.0.5:6379"
    assert cluster_address(" head:6380 ") == "head:6380"


def test_sites_get_an_absolute_home_and_no_telemetry_but_never_the_registry_url(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"FEDGUARD_HOME": "rel", "FEDGUARD_DATABASE_URL": "postgresql://db/x", "FLWR_TELEMETRY_ENABLED": "1",
               "PYTHONPATH": "/extra", "SECRET_TOKEN": "never", "HOME": "/root"}
    env = site_environment(Path("rel"), environ)
    assert env["FEDGUARD_HOME"] == str(tmp_path / "rel")  # a worker's cwd is its node's, not the driver's
    assert "FEDGUARD_DATABASE_URL" not in env  # the coordinator's registry, and a credential: not in runtime_env
    assert (env["FLWR_TELEMETRY_ENABLED"], env["FLWR_DISABLE_UPDATE_CHECK"]) == ("0", "1")
    assert env["PYTHONPATH"].split(os.pathsep)[-1] == "/extra" and sys.path[1] in env["PYTHONPATH"]
    assert "SECRET_TOKEN" not in env and "HOME" not in env  # only what the sites read, not the driver's secrets


def test_an_address_nothing_listens_on_is_refused_at_once_with_how_to_start_a_head() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigurationError) as refused:
        check_reachable(f"127.0.0.1:{port}", timeout=2)
    message = str(refused.value)
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in message and "ray start --head --port 6379" in message
    assert "\n" not in message
    with pytest.raises(ConfigurationError, match="expected HOST:PORT or 'auto'"):
        check_reachable("head-without-port")
    check_reachable("auto")  # Ray finds the local cluster itself


def _cluster(*nodes: tuple[float, float]) -> Cluster:
    return Cluster("head:6379", tuple(ClusterNode(f"n{i}", "10.0.0.1", c, g) for i, (c, g) in enumerate(nodes)))


def test_a_site_must_fit_on_one_node_not_on_the_sum_of_the_nodes() -> None:
    check_placement(_cluster((1, 0), (4, 1)), 2, 0.5)
    with pytest.raises(ConfigurationError) as refused:
        check_placement(_cluster((1, 0), (1, 0)), 2, 0)
    assert str(refused.value) == (
        "the Ray cluster at head:6379 cannot place one site asking --cpus-per-site 2 --gpus-per-site 0: its nodes "
        "offer 1 CPU/0 GPU, 1 CPU/0 GPU (2 CPUs, 0 GPUs in all); lower the flags or add a node that has them")
    with pytest.raises(ConfigurationError, match=r"--gpus-per-site 0\.5: its nodes offer 8 CPU/0 GPU"):
        check_placement(_cluster((8, 0)), 1, 0.5)
    assert _cluster((1, 0), (2, 0.5)).describe() == "head:6379: 2 nodes, 3 CPUs, 0.5 GPUs"


def test_gpus_on_an_attached_cluster_are_checked_there_not_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    SimulationConfig(gpus_per_site=0.5, ray_address="head:6379").validate()  # this machine may have no GPU
