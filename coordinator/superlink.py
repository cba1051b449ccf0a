"""The coordinator's processes: building the SuperLink command, running it, and registering site node keys.

:func:`superlink_argv` is a pure function (tested without starting anything):
TLS with the federation's coordinator certificate, SuperNode authentication
on, state in ``FEDGUARD_HOME/federation/superlink.db``, no runtime dependency
installation, every API bound to loopback (Flower 1.41 serves Fleet, Control
and Runtime on one port; only the mTLS gateway faces the network).
:class:`SuperLinkProcess` starts it, waits until its Control API answers, and
stops it (SIGTERM, then SIGKILL). :func:`sync_nodes` makes Flower's node
registry follow fedguard's site registry: every active credential's node key
registered, every revoked one unregistered, so both layers agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from coordinator import logger
from coordinator.provisioning import FederationConfig, FederationLayout, SiteRegistry
from coordinator.runtime_options import superlink_env, superlink_flags
from federation.processes import stop_process_group
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.settings import is_loopback

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 60.0


def check_insecure(bound: Sequence[str]) -> None:
    """Refuse ``--insecure`` unless every bound address is loopback."""
    public = [h for h in bound if not is_loopback(h)]
    if public:
        raise ConfigurationError(
            f"--insecure is refused while binding {', '.join(public)}: without TLS anyone on the network could "
            "impersonate the coordinator or a site. Bind 127.0.0.1 (--gateway-address 127.0.0.1) or drop --insecure")


def flower_executable(name: str) -> str:
    """The Flower console script beside this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StateError(f"'{name}' is not installed; install fedguard with its dependencies (flwr)")
    return found


def superlink_argv(layout: FederationLayout, config: FederationConfig, *, insecure: bool = False,
                   extra: Sequence[str] = ()) -> list[str]:
    """The ``flower-superlink`` command line for this federation (``extra``: more options appended).

    :func:`coordinator.runtime_options.superlink_flags` (the latency options,
    ``--disable-runtime-dependency-installation`` among them) come right after
    the state database.
    """
    argv = [flower_executable("flower-superlink"), "--host", LOOPBACK, "--port", str(config.superlink_port),
            "--database", str(layout.superlink_db), *superlink_flags()]
    if "--disable-runtime-dependency-installation" not in argv:  # never ``uv sync`` a run (DESIGN §10)
        argv.append("--disable-runtime-dependency-installation")
    if insecure:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(layout.ca_cert), "--ssl-certfile", str(layout.server_cert),
                 "--ssl-keyfile", str(layout.server_key), "--enable-supernode-auth"]
    return argv + list(extra)


TORCH_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Where PyTorch's compiler caches (the ServerApp's and ClientApps' first optimizer step imports it)."""


def flower_env(layout: FederationLayout, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the SuperLink.

    ``base`` (default: ours) with :func:`coordinator.runtime_options.superlink_env`'s
    quiet/fast variables, ``FLWR_HOME`` under the federation, unbuffered output,
    and PyTorch's compile cache under the federation too (its default is
    ``$TMPDIR/torchinductor_$USER``, which would outlive the coordinator).
    """
    env = superlink_env(os.environ if base is None else base)
    env.update(FLWR_HOME=str(layout.root / "flwr"), PYTHONUNBUFFERED="1")
    env.setdefault(TORCH_CACHE_ENV, str(layout.root / "cache" / "torchinductor"))
    return env


@dataclass
class ManagedProcess:
    """A child process whose output goes to a log file, stopped with SIGTERM then SIGKILL."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        logger.info("%s started (pid %d), log %s", self.name, self.process.pid, self.log_path)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def control_client(port: int, ca_cert: Path | None) -> object:
    """A Flower Control API client for the SuperLink on loopback (TLS verified against the federation CA)."""
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

    return ControlHttpClient.from_server_address(
        f"{LOOPBACK}:{port}", insecure=ca_cert is None, root_certificates=str(ca_cert) if ca_cert else None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])


def registered_keys(client: object) -> dict[str, int]:
    """``public key PEM → node id`` of the nodes the SuperLink has registered (unregistered ones left out)."""
    from flwr.proto.control_pb2 import ListNodesRequest

    response = client.ListNodes(ListNodesRequest())  # type: ignore[attr-defined]
    return {info.public_key.decode().strip(): info.node_id for info in response.nodes_info
            if not info.unregistered_at}


def sync_nodes(client: object, sites: SiteRegistry) -> tuple[list[str], list[str]]:
    """Register every active site credential's node key and unregister every revoked one.

    Returns the names of the sites registered and unregistered by this call.
    """
    from flwr.proto.control_pb2 import RegisterNodeRequest, UnregisterNodeRequest

    known = registered_keys(client)
    registered: list[str] = []
    unregistered: list[str] = []
    for name, active, pem in sites.node_keys():
        key = pem.strip()
        if not active and key in known:
            client.UnregisterNode(UnregisterNodeRequest(node_id=known[key]))  # type: ignore[attr-defined]
            unregistered.append(name)
        elif active and key not in known:
            try:  # exactly the bytes the SuperNode sends (PEM with its final newline)
                client.RegisterNode(RegisterNodeRequest(public_key=pem.encode(), name=name))  # type: ignore[attr-defined]
            except Exception:
                # Another sync (the service's loop, or a command in another process) may have registered the
                # key between the listing and this call: Flower then refuses it as already in use (HTTP 412).
                if key in registered_keys(client):
                    continue
                raise
            registered.append(name)
    return registered, unregistered


def wait_ready(check: Callable[[], object], process: ManagedProcess, timeout: float = READY_TIMEOUT) -> None:
    """Call ``check`` until it stops raising; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not process.alive():
            raise StateError(f"{process.name} exited during start-up; last lines of {process.log_path}:\n"
                             f"{process.tail()}")
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    raise StateError(f"{process.name} did not answer within {timeout:.0f} s ({last}); see {process.log_path}")
