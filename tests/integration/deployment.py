"""A real federation on loopback: one SuperLink, N SuperNodes, TLS on, no fixed ports.

Shared by the integration tests and ``benchmarks/deployment.py``. Until the
provisioning launchers (``coordinator/superlink.py``, ``client/supernode.py``)
land, it starts ``flower-superlink`` and the site runtime itself, with a
throwaway CA and a server certificate for ``127.0.0.1``/``localhost``.
``fast=False`` runs Flower's processes out of the box (the baseline).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.runtime_options import superlink_env, superlink_flags
from lifecycle.runtime_options import plain_supernode_command, supernode_command, supernode_env, supernode_flags

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_tls(directory: Path, *, now: dt.datetime | None = None) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedguard test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, key)
    return files


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@dataclass
class Federation:
    """Processes and state of one loopback federation under ``root`` (see the module docstring)."""

    root: Path
    sites: int = 3
    fast: bool = True
    tls: TLSFiles = field(init=False)
    port: int = field(init=False)
    superlink: subprocess.Popen[bytes] | None = field(init=False, default=None)
    supernodes: dict[int, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.root / "tls")
        self.port = free_port()
        for sub in ("home", "flwr-link", "logs"):
            (self.root / sub).mkdir(exist_ok=True)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def site_home(self, index: int) -> Path:
        return self.root / f"home-site-{index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self, env: dict[str, str], flwr_home: Path) -> dict[str, str]:
        env.update(FEDGUARD_HOME=str(self.home), FLWR_HOME=str(flwr_home), PYTHONPATH=str(REPO))
        env.pop("FEDGUARD_DATABASE_URL", None)
        if not self.fast:  # Flower out of the box
            env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
            env["FEDGUARD_GRID_POLL_SECONDS"] = "3"
        return env

    def start_superlink(self) -> None:
        """Start (or restart) the SuperLink; its state lives in a database file, not in memory."""
        env = self._env(superlink_env(), self.root / "flwr-link")
        cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.root / "superlink.db"), "--ssl-ca-certfile", str(self.tls.ca),
               "--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key), *superlink_flags()]
        log = (self.root / "logs" / "superlink.log").open("ab")
        self.superlink = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                          start_new_session=True)
        wait_for_port(self.port)

    def start_supernode(self, index: int, data_path: Path, name: str) -> None:
        flwr_home = self.root / f"flwr-site-{index}"
        flwr_home.mkdir(exist_ok=True)
        env = self._env(supernode_env(), flwr_home)
        env["FEDGUARD_HOME"] = str(self.site_home(index))  # the site's own state (its privacy ledger)
        program = supernode_command() if self.fast else plain_supernode_command()
        cmd = [*program, "--superlink", self.address, "--root-certificates", str(self.tls.ca),
               "--node-config", f"data-path='{data_path}' site-name='{name}'", *supernode_flags()]
        if not self.fast:
            cmd += ["--port", str(free_port())]
        log = (self.root / "logs" / f"site-{index}.log").open("ab")
        self.supernodes[index] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  cwd=self.root, start_new_session=True)

    def check_alive(self) -> None:
        """Raise with the logs if a process of the federation exited on its own."""
        procs = {"superlink": self.superlink, **{f"site-{i}": p for i, p in self.supernodes.items()}}
        dead = [name for name, p in procs.items() if p is not None and p.poll() is not None]
        if dead:
            raise RuntimeError(f"federation process(es) {dead} exited\n{self.logs()}")

    def kill_supernode(self, index: int) -> None:
        """SIGKILL one site's whole process group (SuperNode, executor, ClientApp children)."""
        _stop(self.supernodes[index], signal.SIGKILL)

    def kill_superlink(self) -> None:
        _stop(self.superlink, signal.SIGKILL)

    def stop(self) -> None:
        for proc in self.supernodes.values():
            _stop(proc)
        _stop(self.superlink)

    def client_env(self) -> dict[str, str]:
        """Environment for ``flwr run`` / ``fedguard run launch`` against this federation."""
        env = self._env(dict(os.environ), self.root / "flwr-cli")
        return env

    def write_flwr_config(self, name: str = "fedguard") -> Path:
        """``$FLWR_HOME/config.toml`` naming this SuperLink (TLS, our CA) as connection ``name``."""
        flwr_home = self.root / "flwr-cli"
        flwr_home.mkdir(exist_ok=True)
        path = flwr_home / "config.toml"
        path.write_text(
            f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.tls.ca}"\n'
        )
        return path

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.root / "logs").glob("*.log")))


def prepare_sites(root: Path, sites: int, *, seed: int = 42) -> Path:
    """Write the breast-cancer split: site-<i>.csv, test.csv and schema.json under ``root/data``."""
    from simulations.federation import SimulationConfig, prepare_data

    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    prepare_data(SimulationConfig(sites=sites, rounds=1, seed=seed, local_epochs=1), data_dir)
    return data_dir


def flwr_run(fed: Federation, run_config: dict[str, object], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``flwr run <repo> fedguard --stream`` with ``run_config`` (out-of-the-box submission)."""
    fed.write_flwr_config()
    fed.check_alive()
    cfg = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in run_config.items())
    return subprocess.run([sys.executable, "-m", "flwr.cli.app", "run", str(REPO), "fedguard", "--stream",
                           "--run-config", cfg], env=fed.client_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=fed.root)
