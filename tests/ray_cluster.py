"""A real Ray cluster for tests: a head (and more nodes) started with the ``ray`` CLI, stopped by its own pids.

``ray stop`` stops every Ray of the user, which would break the tests that run
beside this one (``pytest -n auto``) and any researcher's Ray on the same
machine. Each cluster here lives under its own temp dir instead (short, for
Ray's UNIX sockets), and is stopped through the processes whose command line,
or for Ray's renamed processes (``ray::...``, the client server) whose open
log files, name that dir: nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
_ADDRESS = re.compile(r"ray start --address='([^']+)'")
_QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
          "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
          "RAY_agent_register_timeout_ms": "120000"}  # a loaded CI machine starts Ray's Python agents slowly
# Every port the kernel picks: clusters of parallel test workers must not collide (8265, 10001, 52365...).
# ``ray start`` hands its workers and drivers ports from 10002-19999 by default, without asking whether another
# cluster's raylet gave the same one out (``Check failed: server_ ... port is 10002``, a driver's crash); 0 lets
# the kernel pick, as ``ray.init()`` does for the local Ray of ``fedguard simulate``. Ray then refuses a node whose
# other ports keep their defaults below 20000 (dashboard 8265, client server 10001), so every node is given those
# too: the dashboard's 0 and, in ``_ray``, a free client-server port (the kernel's ephemeral range is above 32767).
_NODE_PORTS = ("--dashboard-agent-listen-port", "0", "--metrics-export-port", "0", "--disable-usage-stats",
               "--include-log-monitor", "false", "--min-worker-port", "0", "--dashboard-port", "0")
_HEAD_PORTS = ("--include-dashboard", "false", *_NODE_PORTS)


def _unused_port() -> int:
    """A port free right now, for the one Ray option that refuses 0 (its client server's, default 10001)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def short_tmpdir(prefix: str) -> Path:
    """A fresh dir under the system temp dir: Ray's socket paths under it must stay below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if Path("/tmp").is_dir() else None))


@dataclass
class RayCluster:
    """A Ray cluster of this test session; every process of it runs under ``root``."""

    root: Path
    address: str = ""
    nodes: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def _ray(self, *args: str, timeout: float = 180) -> str:
        # The agents' ports given, not 0: the raylet then does not wait for the agents to write them to a file
        # (30 s at most, too little on a loaded 2-core machine), and nodes on one machine never share one.
        args = (*args, "--dashboard-agent-grpc-port", str(_unused_port()),
                "--runtime-env-agent-port", str(_unused_port()), "--ray-client-server-port", str(_unused_port()))
        env = {**os.environ, **_QUIET}
        env.pop("RAY_ADDRESS", None)  # `ray start --head` would read it
        result = subprocess.run([RAY, "start", *args], env=env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise AssertionError(f"ray start {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout + result.stderr

    def start_head(self, cpus: int, attempts: int = 3) -> str:
        """Start the head node with ``cpus`` CPUs on a port the kernel picks; return its address.

        Ray waits a hard-coded 30 s for its raylet to register with the GCS;
        on a loaded 2-core machine that wait can run out (``The current node
        timed out during startup``), and a session head that failed fails every
        Ray test of its xdist worker. What the failed start left running is
        stopped (this cluster's pids only) and the head is started again,
        ``attempts`` times at most.
        """
        for attempt in range(1, attempts + 1):
            try:
                out = self._ray("--head", "--port", "0", "--num-cpus", str(cpus), "--temp-dir",
                                str(self.root / "ray"), *_HEAD_PORTS)
                break
            except AssertionError as exc:
                if "timed out during startup" not in str(exc) or attempt == attempts:
                    raise
                self.stop()  # what the failed start left running; removes root
                self.root.mkdir(parents=True, exist_ok=True)
        found = _ADDRESS.search(out)
        if found is None:
            self.stop()
            raise AssertionError(f"ray start --head printed no address:\n{out[-3000:]}")
        self.address = found.group(1)
        self.nodes = 1
        return self.address

    def add_node(self, cpus: int) -> None:
        """Start one more node of ``cpus`` CPUs that joins the head (its own temp dir under ``root``)."""
        self._ray("--address", self.address, "--num-cpus", str(cpus),
                  "--temp-dir", str(self.root / f"node-{self.nodes}" / "ray"), *_NODE_PORTS)
        self.nodes += 1

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        """Wait until the cluster's GCS lists ``count`` alive nodes (asked in a child: no driver stays here)."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout
        while True:
            env = {**os.environ, **_QUIET}
            result = subprocess.run([sys.executable, "-c", probe, self.address], env=env, capture_output=True,
                                    text=True, timeout=timeout, check=False)
            alive = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
            if alive and int(alive[0]) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Ray cluster at {self.address}: {alive or result.stderr[-2000:]} "
                                     f"alive node(s) after {timeout:.0f} s, expected {count}")
            time.sleep(0.2)  # polling the GCS for the node's registration, bounded by the deadline

    def stop(self, grace: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Stop every process of this cluster (SIGTERM, then SIGKILL after ``grace`` s), and only those."""
        for pid in self.processes():
            _signal(pid, signal.SIGTERM)
        deadline = clock() + grace
        while clock() < deadline and self.processes():
            time.sleep(0.1)  # polling /proc for the processes' exit, bounded by the deadline
        for pid in self.processes():
            _signal(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def processes(self) -> list[int]:
        """The pids of this user's processes (but this one) still running under ``root``, zombies aside."""
        root = str(self.root)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z" or not cmdline:
                continue
            if root in cmdline or ("ray" in cmdline and _holds_open(int(entry), root)):
                found.append(int(entry))
        return found


def _holds_open(pid: int, root: str) -> bool:
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(f"/proc/{pid}/fd/{entry}").startswith(root):
                return True
        except OSError:
            continue
    return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run_simulation_on_test_ray(home: Path, **kwargs: Any) -> None:
    """Flower's ``run_simulation`` for a test that builds its own apps: on the session's Ray head when the
    test uses the ``shared_ray`` fixture (``RAY_ADDRESS``), else on a local Ray of 2 CPUs, one per site."""
    from flwr.simulation import run_simulation

    from simulations.ray_cluster import attach, cluster_address, detach

    address = cluster_address()
    local: dict[str, Any] = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}
    if address:
        attach(address, home=home, cpus_per_site=1, gpus_per_site=0)
    try:
        run_simulation(backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {} if address else local}, **kwargs)
    finally:
        if address:
            detach()
