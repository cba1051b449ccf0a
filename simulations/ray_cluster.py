"""Running a simulation on a Ray cluster that is already running (``--ray-address``, ``RAY_ADDRESS``).

Without an address, Flower's Ray backend starts a local Ray for the run and
shuts it down at the end (``simulations.federation``), and fedguard owns that
instance: its temp dir, the cleanup of what a killed run left behind. With an
address, the run is one *job* on a cluster somebody else started
(``ray start --head`` on the researcher's machines, more nodes with
``ray start --address HEAD:PORT``): fedguard connects a driver to it
(:func:`attach`), never passes the options only a new instance takes
(``num_cpus``, ``include_dashboard``), never touches the cluster's temp dir
or processes, and only disconnects at the end (Flower's backend calls
``ray.shutdown()``, which for a connected driver ends the job, not the
cluster).

The virtual sites then run in the cluster's worker processes, started by its
raylets rather than by this process: they inherit nothing from the driver's
environment. What they read from it travels as the job's ``runtime_env``
(:func:`site_environment`): ``FEDGUARD_HOME`` made absolute (a worker's
working directory is the one its node was started from), the runtime trace
switch, the quiet Flower variables, and ``PYTHONPATH`` so a
worker imports the same fedguard as the driver (what Flower's backend does
for a local Ray). Ray starts fresh worker processes per job, so one run's
sites never see another run's imported state.

Sites read their data files, and write their logs, by absolute path under
``FEDGUARD_HOME``: on a cluster of several machines that directory (and the
Python environment) must be at the same path on every node, e.g. on a shared
filesystem; :func:`attach` warns when the cluster spans machines.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import ConfigurationError
from simulations import logger

QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
"""Set for every virtual site: no telemetry leaves a site (DESIGN §4), Ray leaves GPU-less sites' devices alone."""

SITE_VARIABLES = ("FEDGUARD_RUNTIME_TRACE", "FLWR_HOME")
"""What a virtual site reads from the environment besides ``FEDGUARD_HOME`` (``client``, ``privacy.ledger``).
Never ``FEDGUARD_DATABASE_URL``: the registry is the coordinator's (the driver's), and a job's
``runtime_env`` is readable by anyone who can list the cluster's jobs."""

HEAD_HINT = "start one with `ray start --head --port 6379` and pass HOST:6379"
CONNECT_TIMEOUT_S = 5.0


def cluster_address(configured: str = "") -> str:
    """The cluster to attach to: ``--ray-address``, else ``RAY_ADDRESS``, else ``""`` (a local Ray)."""
    return configured.strip() or os.environ.get("RAY_ADDRESS", "").strip()


@dataclass(frozen=True)
class ClusterNode:
    """One alive node of the cluster: where it is and what it offers."""

    node_id: str
    host: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Cluster:
    """The cluster a run attached to, as its GCS lists it."""

    address: str
    nodes: tuple[ClusterNode, ...]

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted({n.host for n in self.nodes}))

    def describe(self) -> str:
        """``HOST:PORT: 2 nodes, 2 CPUs, 0 GPUs``."""
        return (f"{self.address}: {len(self.nodes)} node{'s' * (len(self.nodes) != 1)}, "
                f"{_num(self.cpus)} CPUs, {_num(self.gpus)} GPUs")

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "cpus": self.cpus, "gpus": self.gpus,
                "nodes": [{"node_id": n.node_id, "host": n.host, "cpus": n.cpus, "gpus": n.gpus}
                          for n in self.nodes]}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def site_environment(home: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables every virtual site's worker needs, for the job's ``runtime_env``."""
    source = dict(os.environ if environ is None else environ)
    env = {k: source[k] for k in SITE_VARIABLES if source.get(k)}
    env["FEDGUARD_HOME"] = str(home.resolve())
    env.update(QUIET_ENV)
    paths = [p for p in sys.path if p]
    if source.get("PYTHONPATH"):
        paths.append(source["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once an address nothing listens on (Ray itself retries for minutes before it gives up)."""
    if address == "auto" or "://" in address:
        return  # Ray resolves these itself: the local cluster's file, a Ray Client URL
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"--ray-address {address!r}: expected HOST:PORT or 'auto'; {HEAD_HINT}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigurationError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); {HEAD_HINT}, "
                                 "or unset --ray-address and RAY_ADDRESS to run on a local Ray") from exc


def check_placement(cluster: Cluster, cpus_per_site: float, gpus_per_site: float) -> None:
    """Refuse a cluster where no node can host one site: Ray would otherwise wait for the resources forever."""
    fits = [n for n in cluster.nodes if n.cpus >= cpus_per_site and n.gpus >= gpus_per_site]
    if fits:
        return
    offered = ", ".join(f"{_num(n.cpus)} CPU/{_num(n.gpus)} GPU" for n in cluster.nodes) or "no alive node"
    raise ConfigurationError(
        f"the Ray cluster at {cluster.address} cannot place one site asking --cpus-per-site {_num(cpus_per_site)} "
        f"--gpus-per-site {_num(gpus_per_site)}: its nodes offer {offered} ({_num(cluster.cpus)} CPUs, "
        f"{_num(cluster.gpus)} GPUs in all); lower the flags or add a node that has them"
    )


def describe_cluster(address: str) -> Cluster:
    """The alive nodes of the cluster this process is connected to."""
    import ray

    nodes = tuple(
        ClusterNode(str(n["NodeID"]), str(n["NodeManagerAddress"]), float(n["Resources"].get("CPU", 0)),
                    float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes() if n.get("Alive")  # type: ignore[no-untyped-call]
    )
    return Cluster(address, nodes)


def attach(address: str, *, home: Path, cpus_per_site: float, gpus_per_site: float,
           verbose: bool = False) -> Cluster:
    """Connect this process to the cluster at ``address`` as a new job, and check it can host a site.

    Flower's Ray backend then finds Ray initialised and uses this connection
    as it is. Raises :class:`ConfigurationError` (and leaves no connection)
    when nothing answers at the address or no node can place one site.
    """
    import ray

    check_reachable(address)
    if ray.is_initialized():
        ray.shutdown()  # a connection left by an earlier run in this process would carry its environment
    try:
        ray.init(address=address, runtime_env={"env_vars": site_environment(home)}, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise ConfigurationError(f"could not attach to the Ray cluster at {address}: {exc}; {HEAD_HINT}") from exc
    try:
        cluster = describe_cluster(address)
        check_placement(cluster, cpus_per_site, gpus_per_site)
    except BaseException:
        ray.shutdown()
        raise
    logger.info("attached to the Ray cluster at %s", cluster.describe())
    if len(cluster.hosts) > 1:
        logger.warning("the Ray cluster spans %d machines (%s): the sites read %s by absolute path, so it must be "
                       "on a filesystem every node mounts at the same path", len(cluster.hosts),
                       ", ".join(cluster.hosts), home.resolve())
    return cluster


def detach() -> None:
    """End this process's job on the cluster (the cluster keeps running); nothing if not connected."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
