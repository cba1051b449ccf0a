"""The site agent's processes: the forwarder and a Flower SuperNode started from the site's bundle.

:func:`supernode_argv` is pure (tested without starting anything): the
SuperNode dials the forwarder on loopback over TLS (``--root-certificates``
the forwarder's throw-away loopback certificate), signs its requests with the
bundle's node key (``--auth-supernode-private-key``), and receives the site's
settings as ``--node-config`` (``site-name``, ``data-path``, ``schema-path``,
``audit-path``, ``ledger-path``, ``epsilon-cap``, ``device``; the ClientApp reads them), plus
``he-secret-context`` when the bundle carries the federation's CKKS secret context.

Private keys are written only into a 0700 temporary folder (``mkdtemp``)
that lives as long as the agent and is deleted when it stops: Flower reads
its node key from a file and Python's ``ssl`` its certificate key too. The
SuperExec auth secret between the SuperNode and its ClientApp executor
(``client.runtime``) is written there as well, so that nothing the agent
started is left in the temporary directory, even if the SuperNode is killed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from client import logger
from client.forwarder import (
    DEFAULT_MAX_REFUSED,
    Forwarder,
    gateway_context,
    loopback_certificate,
    loopback_context,
)
from client.runtime_options import supernode_command, supernode_env, supernode_flags
from federation.bundle import SiteBundle
from federation.processes import stop_process_group
from lifecycle.errors import StateError
from lifecycle.home import write_private


@dataclass(frozen=True)
class SiteFiles:
    """Where one agent's credentials live for its life (a 0700 temporary folder)."""

    root: Path

    ca_cert = property(lambda self: self.root / "ca.crt")
    site_cert = property(lambda self: self.root / "site.crt")
    site_key = property(lambda self: self.root / "site.key")
    node_key = property(lambda self: self.root / "node.key")
    loopback_cert = property(lambda self: self.root / "loopback.crt")
    loopback_key = property(lambda self: self.root / "loopback.key")
    superexec_secret = property(lambda self: self.root / "superexec.secret")
    he_secret_context = property(lambda self: self.root / "he-secret-context.bin")


HE_SECRET_CONTEXT_KEY = "he-secret-context"
"""The node-config key :mod:`privacy.he.mod` reads (its ``SECRET_CONTEXT_KEY``; not imported: tenseal is heavy)."""


def materialize(bundle: SiteBundle, loopback_cert: bytes, loopback_key: bytes) -> SiteFiles:
    """Write the bundle's certificates and keys (keys 0600) into a fresh 0700 temporary folder."""
    files = SiteFiles(Path(tempfile.mkdtemp(prefix="fedguard-site-")))
    os.chmod(files.root, 0o700)
    files.ca_cert.write_text(bundle.ca_cert)
    files.site_cert.write_text(bundle.site_cert)
    files.loopback_cert.write_bytes(loopback_cert)
    write_private(files.site_key, bundle.site_key.encode())
    write_private(files.node_key, bundle.node_key.encode())
    write_private(files.loopback_key, loopback_key)
    write_private(files.superexec_secret, secrets.token_bytes(32))
    he_secret = bundle.he_secret_bytes()
    if he_secret is not None:
        write_private(files.he_secret_context, he_secret)
    return files


def node_config(values: Mapping[str, str | float | int]) -> str:
    """``--node-config`` text: space-separated ``key=value`` pairs, strings quoted (TOML basic strings)."""
    parts = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_argv(files: SiteFiles, forwarder_port: int, config: Mapping[str, str | float | int], *,
                   runtime_port: int, extra: Sequence[str] = (), program: Sequence[str] | None = None) -> list[str]:
    """The SuperNode command line for this site (``extra``: more options appended).

    The program is :func:`federation.runtime_options.supernode_command` (the
    warm ClientApp executor, a drop-in for ``flower-supernode`` without its
    per-message process start and 3 s idle polling), followed by
    :func:`~federation.runtime_options.supernode_flags`. ``program`` replaces
    it (the benchmark's baseline passes Flower's own ``flower-supernode``).
    The warm runtime gets the agent's SuperExec secret file
    (``--superexec-auth-secret-file``), so that it writes none of its own.
    """
    own = ["--superexec-auth-secret-file", str(files.superexec_secret)] if program is None else []
    return [*(supernode_command() if program is None else program),
            "--superlink", f"127.0.0.1:{forwarder_port}", "--root-certificates", str(files.loopback_cert),
            "--auth-supernode-private-key", str(files.node_key), "--node-config", node_config(config),
            "--host", "127.0.0.1", "--port", str(runtime_port), *own, *supernode_flags(), *extra]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for the SuperNode's own loopback Runtime API)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SiteAgent:
    """Forwarder + SuperNode for one site; ``stop()`` ends both and deletes the key folder.

    The forwarder runs in this process (a thread); the SuperNode is a child
    process (in its own session, so ``stop()`` ends its executor and ClientApp
    children too) whose output goes to ``log_path``. Its environment is
    ``env`` (default: this process's) plus
    :func:`federation.runtime_options.supernode_env`'s quiet/fast variables.
    """

    def __init__(self, bundle: SiteBundle, config: Mapping[str, str | float | int], *, log_path: Path,
                 extra: Sequence[str] = (), runtime_port: int | None = None,
                 env: Mapping[str, str] | None = None, program: Sequence[str] | None = None,
                 env_overrides: Mapping[str, str] | None = None, max_refused: int = DEFAULT_MAX_REFUSED) -> None:
        self.max_refused = max_refused
        self.bundle = bundle
        self.config = dict(config)
        self.log_path = log_path
        self.extra = list(extra)
        self.runtime_port = runtime_port
        self.env = dict(env if env is not None else os.environ)
        self.program = list(program) if program is not None else None
        self.env_overrides = dict(env_overrides or {})
        self.files: SiteFiles | None = None
        self.forwarder: Forwarder | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SiteAgent:
        cert, key = loopback_certificate()
        self.files = files = materialize(self.bundle, cert, key)
        if files.he_secret_context.exists():  # an explicit node-config path wins
            self.config.setdefault(HE_SECRET_CONTEXT_KEY, str(files.he_secret_context))
        try:
            self.forwarder = Forwarder(
                gateway_host=self.bundle.host, gateway_port=self.bundle.port,
                gateway_ctx=gateway_context(files.ca_cert, files.site_cert, files.site_key),
                loopback_ctx=loopback_context(files.loopback_cert, files.loopback_key),
                max_refused=self.max_refused).start()
            argv = supernode_argv(files, self.forwarder.port, self.config,
                                  runtime_port=self.runtime_port or free_port(), extra=self.extra,
                                  program=self.program)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.process_env(), start_new_session=True)
        except BaseException:
            self.stop()
            raise
        logger.info("site %s: SuperNode pid %d via forwarder 127.0.0.1:%d → %s, log %s", self.bundle.site,
                    self.process.pid, self.forwarder.port, self.bundle.endpoint, self.log_path)
        return self

    def process_env(self) -> dict[str, str]:
        """The SuperNode's environment: ``env``, the runtime options' quiet/fast variables, ``env_overrides``."""
        env = {**supernode_env(self.env), **self.env_overrides}
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.log_path.parent / "cache" / "torchinductor"))  # not TMPDIR
        return env

    def refused(self) -> str | None:
        """Why the coordinator refused this site's certificate ``max_refused`` times in a row, else ``None``."""
        return self.forwarder.refused if self.forwarder is not None else None

    def probe_refusal(self) -> str | None:
        """Whether the coordinator refuses this site's certificate right now (one handshake), and why."""
        return self.forwarder.probe() if self.forwarder is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        if self.process is None:
            raise StateError("the site agent was not started")
        return self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process, timeout)
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.files is not None:
            shutil.rmtree(self.files.root, ignore_errors=True)
            self.files = None

    def __enter__(self) -> SiteAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
