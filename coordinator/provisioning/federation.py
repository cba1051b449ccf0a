"""A federation's files under ``FEDGUARD_HOME/federation/`` and ``fedguard coordinator init``.

Layout (the folder is 0700, private keys 0600)::

    config.toml        flat TOML: federation, endpoint, gateway-address, gateway-port,
                       superlink-port, hosts, addresses
    ca.crt  ca.key     the federation CA (the key signs site certificates and the CRL)
    coordinator.crt/.key   the TLS server certificate of the gateway and the SuperLink
    crl.pem            revoked site certificates, re-signed at every rotate/revoke
    superlink.db       the SuperLink's state (runs, nodes) so a restart keeps it
    contract.json      the federation's data contract (``fedguard coordinator data``), copied into bundles
    reference/         the coordinator's held-out reference set: test.csv, schema.json, contract.json
    logs/              superlink.log, gateway.log
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from coordinator.provisioning.authority import (
    KeyPair,
    build_crl,
    create_ca,
    issue_server_certificate,
)
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.home import write_private

DEFAULT_GATEWAY_PORT = 9443
DEFAULT_SUPERLINK_PORT = 9444


@dataclass(frozen=True)
class FederationConfig:
    """``config.toml``: what the coordinator binds and what sites dial."""

    federation: str
    endpoint: str
    gateway_address: str = "0.0.0.0"
    gateway_port: int = DEFAULT_GATEWAY_PORT
    superlink_port: int = DEFAULT_SUPERLINK_PORT
    hosts: tuple[str, ...] = field(default=())
    addresses: tuple[str, ...] = field(default=())

    def to_toml(self) -> dict[str, Any]:
        return {"federation": self.federation, "endpoint": self.endpoint,
                "gateway-address": self.gateway_address, "gateway-port": self.gateway_port,
                "superlink-port": self.superlink_port, "hosts": list(self.hosts), "addresses": list(self.addresses)}

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> FederationConfig:
        try:
            return cls(federation=str(data["federation"]), endpoint=str(data["endpoint"]),
                       gateway_address=str(data.get("gateway-address", "0.0.0.0")),
                       gateway_port=int(data.get("gateway-port", DEFAULT_GATEWAY_PORT)),
                       superlink_port=int(data.get("superlink-port", DEFAULT_SUPERLINK_PORT)),
                       hosts=tuple(data.get("hosts", ())), addresses=tuple(data.get("addresses", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"the federation config lacks or mangles {exc}; fix config.toml") from exc


@dataclass(frozen=True)
class FederationLayout:
    """Paths of one federation's files."""

    root: Path

    @classmethod
    def under(cls, home: Path) -> FederationLayout:
        return cls(home / "federation")

    config = property(lambda self: self.root / "config.toml")
    ca_cert = property(lambda self: self.root / "ca.crt")
    ca_key = property(lambda self: self.root / "ca.key")
    server_cert = property(lambda self: self.root / "coordinator.crt")
    server_key = property(lambda self: self.root / "coordinator.key")
    crl = property(lambda self: self.root / "crl.pem")
    superlink_db = property(lambda self: self.root / "superlink.db")
    logs = property(lambda self: self.root / "logs")
    contract = property(lambda self: self.root / "contract.json")
    reference = property(lambda self: self.root / "reference")
    he_public_context = property(lambda self: self.root / "he-public-context.bin")  # 'site he-keys' default
    superlink_log = property(lambda self: self.root / "logs" / "superlink.log")
    gateway_log = property(lambda self: self.root / "logs" / "gateway.log")

    def exists(self) -> bool:
        config: Path = self.config  # the path properties above are untyped lambdas
        return config.exists()

    def read_config(self) -> FederationConfig:
        if not self.config.exists():
            raise StateError(f"no federation at {self.root}; run 'fedguard coordinator init --federation NAME' first")
        try:
            return FederationConfig.from_toml(tomllib.loads(self.config.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{self.config} is not valid TOML: {exc}") from exc

    def write_config(self, config: FederationConfig) -> None:
        self.config.write_text(tomli_w.dumps(config.to_toml()))

    def ca(self) -> KeyPair:
        try:
            return KeyPair(self.ca_cert.read_bytes(), self.ca_key.read_bytes())
        except OSError as exc:
            raise StateError(f"cannot read the federation CA in {self.root}: {exc.strerror or exc}") from exc


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigurationError(f"invalid federation name '{name}': use 1-64 letters, digits, '-', '_' or '.'")
    return name


def init_federation(home: Path, federation: str, *, hosts: tuple[str, ...] = (), addresses: tuple[str, ...] = (),
                    gateway_address: str = "0.0.0.0", gateway_port: int = DEFAULT_GATEWAY_PORT,
                    superlink_port: int = DEFAULT_SUPERLINK_PORT, endpoint: str | None = None,
                    force: bool = False) -> FederationLayout:
    """Create the CA, the coordinator's certificate, an empty CRL and the config.

    Refuses to overwrite an existing federation unless ``force``: a new CA
    silently invalidates every bundle already handed out.
    """
    _check_name(federation)
    layout = FederationLayout.under(home)
    if layout.exists() and not force:
        raise StateError(f"a federation already exists in {layout.root}; every issued bundle depends on its CA. "
                         "Use another FEDGUARD_HOME, or --force to replace it (all sites must re-enrol)")
    if endpoint is None:
        endpoint_host = hosts[0] if hosts else (addresses[0] if addresses else "127.0.0.1")
        endpoint_host = f"[{endpoint_host}]" if ":" in endpoint_host else endpoint_host
        endpoint = f"{endpoint_host}:{gateway_port}"
    try:
        layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(layout.root, 0o700)
        layout.logs.mkdir(exist_ok=True)
        ca = create_ca(federation)
        server = issue_server_certificate(ca, federation, hosts, addresses)
        write_private(layout.ca_key, ca.key_pem)
        layout.ca_cert.write_bytes(ca.cert_pem)
        write_private(layout.server_key, server.key_pem)
        layout.server_cert.write_bytes(server.cert_pem)
        layout.crl.write_bytes(build_crl(ca, []))
        layout.write_config(FederationConfig(federation, endpoint, gateway_address, gateway_port, superlink_port,
                                             tuple(hosts), tuple(addresses)))
    except OSError as exc:
        raise StateError(f"cannot write the federation files in {layout.root}: {exc.strerror or exc}") from exc
    return layout


def with_ports(config: FederationConfig, *, gateway_port: int | None = None,
               superlink_port: int | None = None) -> FederationConfig:
    """``config`` with ports overridden (the CLI's ``--gateway-port``/``--superlink-port``)."""
    return replace(config, gateway_port=gateway_port or config.gateway_port,
                   superlink_port=superlink_port or config.superlink_port)
