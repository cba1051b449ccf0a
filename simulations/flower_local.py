"""``flwr run . local-simulation``: the Flower configuration it needs, and stopping what it started.

Flower 1.41 moved SuperLink connections out of ``pyproject.toml`` into the
Flower configuration file, ``$FLWR_HOME/config.toml`` (``~/.flwr`` without
``FLWR_HOME``). On a fresh machine that file has no ``local-simulation``
connection, so the documented ``flwr run . local-simulation`` failed.
:func:`write_local_simulation` writes it with Flower's own writer: the local
SuperLink magic address (``:local:``: ``flwr run`` starts a SuperLink in
simulation mode on first use and leaves it running); the number of virtual
sites and their CPUs go on the command line (``--federation-config``).

Runtime dependency installation (``uv sync`` per run, which fetched a 5.3 GB
CUDA torch here) is switched off by ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``
in the environment of the ``flwr run`` that starts the local SuperLink: the
SuperLink reads it once, at start (``flwr/superlink/cli/flower_superlink.py``),
so a SuperLink already running keeps its setting; :func:`local_superlinks`
finds it, and :func:`stop_local_superlink` stops exactly it: the
``flower-superlink`` of this user whose ``--log-file`` is this
``FLWR_HOME``'s, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.flower_config import read_superlink_connection, write_superlink_connection
from flwr.cli.typing import SuperLinkConnection
from flwr.supercore.utils import get_flwr_home

from lifecycle.errors import ConfigurationError
from simulations import logger

CONNECTION = "local-simulation"
LOCAL_ADDRESS = ":local:"  # flwr.cli.constant.LOCAL_SUPERLINK_ADDRESS_MAGIC_VALUE
NO_INSTALL_ENV = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"


@dataclass(frozen=True)
class LocalConnection:
    """The connection as written, where, and the ``flwr run`` command that uses it."""

    name: str
    num_supernodes: int
    cpus_per_site: int
    config_path: Path

    @property
    def command(self) -> str:
        """The whole command: no runtime install, and the federation's size (Flower 1.41 spelling)."""
        return (f"{NO_INSTALL_ENV}=1 flwr run . {self.name} --federation-config "
                f"\"num-supernodes={self.num_supernodes} client-resources-num-cpus={self.cpus_per_site}\" --stream")


def write_local_simulation(name: str = CONNECTION, *, num_supernodes: int = 5,
                           cpus_per_site: int = 1) -> LocalConnection:
    """Write (or replace) the local simulation connection ``name`` in the Flower configuration file.

    The connection holds only the local SuperLink's magic address: its
    ``options.*`` keys are deprecated in Flower 1.41 (a warning on every
    run), so the federation's size travels on the command line
    (``--federation-config``, :attr:`LocalConnection.command`).
    ``num_supernodes`` must be at least the run config's ``num-sites``, or
    the ServerApp refuses the run at once (``coordinator.ledger.identify_sites``).
    """
    if num_supernodes < 1:
        raise ConfigurationError(f"--num-supernodes {num_supernodes}: a federation needs at least 1 site")
    if cpus_per_site < 1:
        raise ConfigurationError(f"--cpus-per-site {cpus_per_site}: Flower reserves whole CPUs per site (≥ 1)")
    with contextlib.redirect_stdout(sys.stderr):  # flwr announces a config file it creates on stdout
        write_superlink_connection(SuperLinkConnection(name=name, address=LOCAL_ADDRESS))
        read_superlink_connection(name)  # what flwr run will read: raises if the file is not usable
    return LocalConnection(name, num_supernodes, cpus_per_site, get_flwr_home() / "config.toml")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def local_superlinks(flwr_home: Path | None = None) -> list[int]:
    """Pids of this user's ``flower-superlink`` processes that ``flwr run`` started for ``flwr_home``."""
    log_file = str((flwr_home or get_flwr_home()) / "local-superlink" / "superlink.log")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        args = _cmdline(int(entry))
        is_superlink = any(Path(arg).name == "flower-superlink" for arg in args[:2])
        if is_superlink and "--log-file" in args and args[args.index("--log-file") + 1:][:1] == [log_file]:
            found.append(int(entry))
    return found


def stop_local_superlink(flwr_home: Path | None = None, *, grace: float = 15.0,
                         clock: Callable[[], float] = time.monotonic) -> list[int]:
    """SIGTERM this ``FLWR_HOME``'s local SuperLink (SIGKILL after ``grace`` s); return the pids stopped.

    The SuperLink's SuperExec and simulation processes watch their parent's
    pid and exit with it.
    """
    pids = local_superlinks(flwr_home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = clock() + grace
    while (alive := [p for p in pids if _running(p)]) and clock() < deadline:
        time.sleep(0.05)  # polling for the exit, bounded by the deadline
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        logger.info("stopped the local SuperLink (pid %d)", pid)
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
