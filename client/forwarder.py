"""The site's forwarder: the SuperNode's only way out, through mutual TLS to the coordinator's gateway.

Flower's SuperNode cannot present a client certificate. It therefore dials
this forwarder on the site's loopback, over Flower's own TLS (a throw-away
certificate for 127.0.0.1 created at start and passed to the SuperNode as its
root certificate), and the forwarder dials the gateway presenting the site's
certificate from the bundle and verifying the coordinator's certificate
against the federation CA (host name checked). It opens nothing towards the
network: only an outbound connection per SuperNode connection.

Notes
-----
Terminating TLS here instead of tunnelling the SuperNode's TLS end to end is
what lets the gateway read the HTTP request line and keep the Control API out
of a site's reach (see :mod:`coordinator.gateway`); the loopback hop is still
TLS so Flower runs with TLS on, as it expects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import logger
from federation.streams import RelayServer, pump

CONNECT_TIMEOUT = 15.0


def loopback_certificate(*, now: datetime | None = None) -> tuple[bytes, bytes]:
    """A throw-away self-signed P-256 certificate for 127.0.0.1/localhost: ``(cert_pem, key_pem)``.

    It protects only the hop from the SuperNode to this forwarder on the same
    machine and lives as long as the agent.
    """
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedguard site loopback")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def gateway_context(ca_cert: Path, site_cert: Path, site_key: Path) -> ssl.SSLContext:
    """TLS 1.2+ client context: trust only the federation CA, present the site's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_cert))
    ctx.load_cert_chain(site_cert, site_key)
    return ctx


def loopback_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context for the loopback side the SuperNode dials, with the forwarder's own certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class Forwarder:
    """``127.0.0.1:port`` (TLS, loopback certificate) → gateway (mutual TLS, site certificate)."""

    def __init__(self, *, gateway_host: str, gateway_port: int, gateway_ctx: ssl.SSLContext,
                 loopback_ctx: ssl.SSLContext, port: int = 0) -> None:
        self.gateway = (gateway_host, gateway_port)
        self._gateway_ctx = gateway_ctx
        self.server = RelayServer("forwarder", "127.0.0.1", port, self._handle, tls=lambda: loopback_ctx)

    @property
    def port(self) -> int:
        return self.server.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.gateway, ssl=self._gateway_ctx, server_hostname=self.gateway[0],
                                        limit=1 << 20), CONNECT_TIMEOUT)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
            logger.warning("forwarder: cannot reach the coordinator's gateway %s:%d: %s", *self.gateway,
                           getattr(exc, "reason", None) or exc)
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def start(self) -> Forwarder:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
