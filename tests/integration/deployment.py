"""A real federation on loopback, provisioned and run the way operators do it; no fixed ports.

Shared by the integration tests and ``benchmarks/deployment.py``:

* ``coordinator init`` (:func:`coordinator.provisioning.init_federation`): the
  federation CA, the coordinator's certificate, ``config.toml`` with a gateway
  port and a SuperLink port picked free at run time;
* ``site he-keys`` (with ``he=True``): the federation's CKKS key pair, the
  sites' secret context outside the coordinator's home, the public one in
  ``FEDGUARD_HOME/federation``;
* ``site enroll`` (:meth:`SiteRegistry.enroll`) writes one bundle per site
  (with the CKKS secret context inside when ``he=True``);
* ``coordinator start`` (:class:`coordinator.deployment.CoordinatorService`):
  the SuperLink on loopback with TLS, SuperNode authentication, its state in
  ``superlink.db`` and the runtime options, behind the mutual-TLS gateway;
  node keys registered from the site registry;
* ``client start`` (:class:`client.supernode.SiteAgent`): per site, the
  forwarder (mutual TLS to the gateway with the bundle's certificate) and the
  warm SuperNode runtime signing with the bundle's node key.

These are the objects the CLI commands build, run in-process to spare an
interpreter start per command. Runs are submitted with the real
``fedguard run launch|resume`` (a subprocess), which finds the SuperLink and
its CA in ``FEDGUARD_HOME/federation`` by itself. ``fast=False`` runs
Flower's own ``flower-supernode`` and its default polling (the benchmark's
baseline), through the same gateway.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from client.runtime_options import plain_supernode_command
from client.supernode import SiteAgent
from coordinator.deployment import CoordinatorService
from coordinator.provisioning import FederationConfig, FederationLayout, SiteRegistry, init_federation
from coordinator.superlink import control_client
from federation.bundle import SiteBundle
from lifecycle.registry import Registry
from lifecycle.settings import Settings

REPO = Path(__file__).resolve().parents[2]
FEDERATION = "fedguard-it"
DROPPED_ENV = ("FEDGUARD_DATABASE_URL", "FEDGUARD_SUPERLINK", "FEDGUARD_SUPERLINK_CA")
"""Never inherited from the test's environment: each federation has its own SQLite registry and SuperLink."""


@dataclass(frozen=True)
class TLSFiles:
    """The federation CA and the coordinator's certificate and key (``coordinator init`` wrote them)."""

    ca: Path
    cert: Path
    key: Path


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (Linux's ``ip_local_port_range``; IANA's 49152 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range.

    A federation's ports are written into its ``config.toml`` before its
    processes bind them, and stay the same across a coordinator restart
    (the sites dial the same gateway). A port from ``bind(0)`` lies in the
    ephemeral range, where any other ``bind(0)`` or outgoing connection on
    this machine (another test's server, the sites' own connections) may
    take it before the SuperLink binds it, or while it restarts; below that
    range only an explicit bind can.
    """
    chooser = random.SystemRandom()
    for _ in range(200):
        port = chooser.randrange(10_000, _ephemeral_low())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on 127.0.0.1 between 10000 and the ephemeral range after 200 tries")


def _killpg(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process group (a crash: nothing gets to clean up) and reap its leader."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=15)


@dataclass
class Federation:
    """One loopback federation under ``root`` (see the module docstring)."""

    root: Path
    sites: int = 3
    fast: bool = True
    he: bool = False
    layout: FederationLayout = field(init=False)
    registry: Registry = field(init=False)
    site_registry: SiteRegistry = field(init=False)
    service: CoordinatorService | None = field(init=False, default=None)
    agents: dict[int, SiteAgent] = field(init=False, default_factory=dict)
    bundles: dict[str, SiteBundle] = field(init=False, default_factory=dict)
    he_public_context: Path | None = field(init=False, default=None)
    """The coordinator's CKKS public context (``he=True``): a ckks job's ``he-public-context``."""
    he_secret_context: Path | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "bundles"):
            (self.root / sub).mkdir(exist_ok=True)
        self.layout = init_federation(self.home, FEDERATION, gateway_address="127.0.0.1",
                                      gateway_port=free_port(), superlink_port=free_port())
        self.registry = Registry.open(self.settings)
        self.site_registry = SiteRegistry(self.registry, self.layout)
        if self.he:
            from privacy.he import create_federation_keys

            self.he_secret_context, self.he_public_context = create_federation_keys(self.root / "he-sites",
                                                                                    self.layout.root)

    @property
    def home(self) -> Path:
        """The coordinator's ``FEDGUARD_HOME`` (registry, federation, runs)."""
        return self.root / "home"

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home, database_url=None)

    def site_home(self, index: int) -> Path:
        """Site ``index``'s own ``FEDGUARD_HOME`` (its privacy ledger)."""
        return self.root / f"home-site-{index}"

    @property
    def config(self) -> FederationConfig:
        return self.layout.read_config()

    @property
    def address(self) -> str:
        """The SuperLink's Control API on loopback (what ``fedguard run`` dials on the coordinator)."""
        return f"127.0.0.1:{self.config.superlink_port}"

    @property
    def gateway_port(self) -> int:
        return self.config.gateway_port

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles(self.layout.ca_cert, self.layout.server_cert, self.layout.server_key)

    def _env(self, flwr_home: Path, fedguard_home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(FEDGUARD_HOME=str(fedguard_home), FLWR_HOME=str(flwr_home), PYTHONPATH=str(REPO))
        return env

    def start_coordinator(self) -> CoordinatorService:
        """``fedguard coordinator start``: SuperLink (TLS, node auth, superlink.db) + gateway + node-key sync."""
        baseline = {} if self.fast else {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1", "FEDGUARD_GRID_POLL_SECONDS": "3"}
        self.service = CoordinatorService(self.layout, self.config, self.site_registry, sync_interval=2.0,
                                          base_env=self._env(self.layout.root / "flwr", self.home),
                                          superlink_env=baseline).start()
        return self.service

    start_superlink = start_coordinator  # the benchmark's name for it

    def enroll(self, name: str) -> SiteBundle:
        """``fedguard site enroll NAME --out bundles/NAME.bundle [--he-secret-context]`` (once per name).

        A running coordinator syncs the new node key.
        """
        if name not in self.bundles:
            secret = self.he_secret_context.read_bytes() if self.he_secret_context is not None else None
            self.bundles[name] = self.site_registry.enroll(name, self.root / "bundles" / f"{name}.bundle",
                                                           he_secret_context=secret)
            if self.service is not None:
                self.service.sync_now()
        return self.bundles[name]

    def start_supernode(self, index: int, data_path: Path, name: str) -> SiteAgent:
        """``fedguard client start --bundle NAME.bundle --data DATA`` for site ``index``."""
        flwr_home = self.root / f"flwr-site-{index}"
        flwr_home.mkdir(exist_ok=True)
        env = self._env(flwr_home, self.site_home(index))
        overrides = {} if self.fast else {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1"}
        agent = SiteAgent(self.enroll(name), {"site-name": name, "data-path": str(data_path)},
                          log_path=self.root / "logs" / f"site-{index}.log", env=env, env_overrides=overrides,
                          program=None if self.fast else plain_supernode_command())
        self.agents[index] = agent.start()
        return agent

    def nodes(self) -> dict[str, str]:
        """``site name → status`` of the registered nodes, from the SuperLink's Control API (TLS, loopback)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        client = control_client(self.config.superlink_port, self.layout.ca_cert)
        try:
            infos = client.ListNodes(ListNodesRequest()).nodes_info  # type: ignore[attr-defined]
        finally:
            client.close()  # type: ignore[attr-defined]
        return {n.name: n.status for n in infos if not n.unregistered_at}

    def wait_online(self, names: set[str], timeout: float = 180.0) -> None:
        """Until every site in ``names`` has activated through its forwarder, the gateway and node auth."""
        deadline = time.monotonic() + timeout
        while {n for n, status in self.nodes().items() if status == "online"} < names:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"sites not online after {timeout:.0f} s: {self.nodes()}\n{self.logs()}")
            time.sleep(0.2)

    @contextmanager
    def running(self, data: Path) -> Iterator[Federation]:
        """The coordinator and one site agent per ``data/site-<i>.csv``, all online; everything stopped after."""
        try:
            self.start_coordinator()
            for i in range(self.sites):
                self.start_supernode(i, data / f"site-{i}.csv", f"site-{i}")
            self.wait_online({f"site-{i}" for i in range(self.sites)})
            yield self
        finally:
            self.stop()

    def check_alive(self) -> None:
        """Raise with the logs if a process of the federation exited on its own."""
        dead = [] if self.service is not None and self.service.alive() else ["coordinator"]
        dead += [f"site-{i}" for i, a in self.agents.items() if not a.alive()]
        if dead:
            raise RuntimeError(f"federation process(es) {dead} exited\n{self.logs()}")

    def kill_supernode(self, index: int) -> None:
        """Site ``index`` crashes: SIGKILL its SuperNode, executor and ClientApp children; its forwarder goes too."""
        agent = self.agents.pop(index)
        _killpg(agent.process)
        agent.stop()

    def kill_coordinator(self) -> None:
        """The coordinator crashes: SIGKILL the SuperLink's group (SuperExec, ServerApp); its gateway goes too."""
        assert self.service is not None
        _killpg(self.service.superlink.process if self.service.superlink else None)
        self.service.stop()
        self.service = None

    kill_superlink = kill_coordinator

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()
        if self.service is not None:
            self.service.stop()
            self.service = None

    def client_env(self) -> dict[str, str]:
        """Environment for ``fedguard run ...`` on the coordinator machine."""
        return self._env(self.root / "flwr-cli", self.home)

    def write_flwr_config(self, name: str = "fedguard") -> Path:
        """``$FLWR_HOME/config.toml`` naming this SuperLink (TLS, the federation CA) as connection ``name``."""
        flwr_home = self.root / "flwr-cli"
        flwr_home.mkdir(exist_ok=True)
        path = flwr_home / "config.toml"
        path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{self.address}"\n'
                        f'root-certificates = "{self.tls.ca}"\n')
        return path

    def logs(self) -> str:
        paths = sorted((self.root / "logs").glob("*.log")) + sorted(self.layout.logs.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in paths)


def prepare_sites(root: Path, sites: int, *, seed: int = 42) -> Path:
    """Write the breast-cancer split: site-<i>.csv, test.csv and schema.json under ``root/data``."""
    from simulations.federation import SimulationConfig, prepare_data

    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    prepare_data(SimulationConfig(sites=sites, rounds=1, seed=seed, local_epochs=1), data_dir)
    return data_dir


def flwr_run(fed: Federation, run_config: dict[str, object], *,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``flwr run <repo> fedguard --stream`` with ``run_config`` (out-of-the-box submission)."""
    fed.write_flwr_config()
    fed.check_alive()
    cfg = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in run_config.items())
    return subprocess.run([sys.executable, "-m", "flwr.cli.app", "run", str(REPO), "fedguard", "--stream",
                           "--run-config", cfg], env=fed.client_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=fed.root, check=False)
