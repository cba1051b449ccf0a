"""The running coordinator: SuperLink + mTLS gateway + node-key sync, started and stopped as one.

``fedguard coordinator start`` builds a :class:`CoordinatorService` and keeps
it in the foreground. Start order: CRL re-signed from the registry →
SuperLink (loopback, TLS, node auth, persistent state) → wait for its Control
API → register the node keys of active sites and unregister revoked ones →
gateway on the public address. The SuperLink's environment tells the
ServerApps it runs to bind every site to the identity its node key was
enrolled with (``coordinator.identity``). While running, node keys are re-synchronised
(and the CRL refreshed when a day old) every ``sync_interval`` seconds, so
``fedguard site rotate|revoke`` in another shell reaches Flower's layer too;
the gateway already enforces the new CRL at the next handshake.

With ``insecure`` (loopback only, refused otherwise) there is no TLS, no
gateway and no node authentication: the SuperLink alone on 127.0.0.1, for a
developer's machine.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coordinator import logger
from coordinator.gateway import Gateway, GatewayTls
from coordinator.identity import IDENTITY_ENV
from coordinator.provisioning import FederationConfig, FederationLayout, SiteRegistry
from coordinator.superlink import (
    LOOPBACK,
    ManagedProcess,
    check_insecure,
    control_client,
    flower_env,
    registered_keys,
    superlink_argv,
    sync_nodes,
    wait_ready,
)


@dataclass
class CoordinatorService:
    """One coordinator: the SuperLink child process, the gateway thread and the sync thread."""

    layout: FederationLayout
    config: FederationConfig
    sites: SiteRegistry
    insecure: bool = False
    superlink_extra: Sequence[str] = ()
    superlink_env: Mapping[str, str] = field(default_factory=dict)
    base_env: Mapping[str, str] | None = None
    """The SuperLink's (and so the ServerApp's) base environment [this process's]; ``superlink_env`` goes on top."""
    sync_interval: float = 5.0
    superlink: ManagedProcess | None = None
    gateway: Gateway | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync_thread: threading.Thread | None = None
    _sync_lock: threading.Lock = field(default_factory=threading.Lock)
    """One node-key sync at a time in this process: the loop and :meth:`sync_now` would both register a new key."""
    _control: object | None = None

    def start(self) -> CoordinatorService:
        if self.insecure:
            check_insecure([self.config.gateway_address, LOOPBACK])
        else:
            self.sites.write_crl()  # from the registry: a crash between a revoke's commit and its CRL heals here
        argv = superlink_argv(self.layout, self.config, insecure=self.insecure, extra=self.superlink_extra)
        env = {**flower_env(self.layout, self.base_env), IDENTITY_ENV: "reported" if self.insecure else "enrolled",
               **self.superlink_env}  # the ServerApps it runs bind every site to its enrolled node key, or cannot
        self.superlink = ManagedProcess("SuperLink", argv, self.layout.superlink_log, env).start()
        try:
            client = self._control = self._client()
            wait_ready(lambda: registered_keys(client), self.superlink)
            if self.insecure:  # no TLS anywhere: SuperNodes dial the loopback SuperLink directly
                return self
            added, removed = sync_nodes(client, self.sites)
            logger.info("node keys registered for %s; unregistered for %s", added or "none", removed or "none")
            self.gateway = Gateway(
                GatewayTls(self.layout.ca_cert, self.layout.server_cert, self.layout.server_key, self.layout.crl),
                host=self.config.gateway_address, port=self.config.gateway_port, upstream_host=LOOPBACK,
                upstream_port=self.config.superlink_port, lookup=self.sites.credential_state).start()
        except BaseException:
            self.stop()
            raise
        self._sync_thread = threading.Thread(target=self._sync_loop, args=(client,), name="node-sync", daemon=True)
        self._sync_thread.start()
        return self

    def _client(self) -> object:
        return control_client(self.config.superlink_port, None if self.insecure else self.layout.ca_cert)

    def _sync_loop(self, client: object) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                if self.sites.refresh_crl():
                    logger.info("CRL re-signed (daily refresh)")
                with self._sync_lock:
                    added, removed = sync_nodes(client, self.sites)
                if added or removed:
                    logger.info("node keys registered for %s; unregistered for %s", added, removed)
            except Exception as exc:  # noqa: BLE001 - keep serving; log and retry
                logger.warning("node-key sync with the SuperLink failed (will retry): %s", exc)

    def sync_now(self) -> tuple[list[str], list[str]]:
        """Synchronise node keys right away (the loop does it every ``sync_interval`` seconds)."""
        client = self._client()
        try:
            with self._sync_lock:
                return sync_nodes(client, self.sites)
        finally:
            client.close()  # type: ignore[attr-defined]

    @property
    def gateway_port(self) -> int:
        """The port sites dial: the gateway's, or in ``--insecure`` mode the SuperLink's on loopback."""
        if self.insecure:
            return self.config.superlink_port
        return self.gateway.port if self.gateway is not None else self.config.gateway_port

    def alive(self) -> bool:
        return self.superlink is not None and self.superlink.alive()

    def stop(self) -> None:
        self._stop.set()
        if self.gateway is not None:
            self.gateway.stop()
        if self.superlink is not None:
            self.superlink.stop()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=5)
        close = getattr(self._control, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> CoordinatorService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
