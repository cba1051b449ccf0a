"""The site's forwarder: the SuperNode's only way out, through mutual TLS to the coordinator's gateway.

Flower's SuperNode cannot present a client certificate. It therefore dials
this forwarder on the site's loopback, over Flower's own TLS (a throw-away
certificate for 127.0.0.1 created at start and passed to the SuperNode as its
root certificate), and the forwarder dials the gateway presenting the site's
certificate from the bundle and verifying the coordinator's certificate
against the federation CA (host name checked). It opens nothing towards the
network: only an outbound connection per SuperNode connection.

Refusals: when the gateway refuses the site's certificate it sends a TLS
alert (``certificate revoked``, ``unknown ca``, ``certificate required``...);
with TLS 1.2 it ends the handshake, with TLS 1.3 it arrives on the first read
(RFC 8446 §4.4.2). The forwarder logs one line per refused connection saying
so and what to do, and after ``max_refused`` refusals in a row (no answer from
the coordinator in between) it reports the agent as refused
(:attr:`Forwarder.refused`), which ``fedguard client start`` turns into
:class:`lifecycle.errors.CertificateRefusedError` (exit 7). A network failure
(no route, timeout, connection reset without an alert) is not a refusal: the
SuperNode keeps retrying.

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
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import logger
from federation.streams import CHUNK, RelayServer, close, pump

CONNECT_TIMEOUT = 15.0
DEFAULT_MAX_REFUSED = 3
REFUSALS = {"SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked", "TLSV1_ALERT_UNKNOWN_CA": "unknown CA",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate required",
            "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate", "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
            "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate"}
"""OpenSSL reasons of the TLS alerts by which the gateway refuses a client certificate → the words we log."""
ADVICE = {
    "revoked": "Ask the coordinator operator: if this site was rotated ('fedguard site rotate'), start the agent "
               "with its new bundle; if it was revoked, it must be enrolled again under a new name",
    "unknown CA": "This bundle is not from this coordinator's federation (or its CA was replaced); ask the "
                  "coordinator operator for a new bundle ('fedguard site enroll' or 'fedguard site rotate')",
    "expired": "Ask the coordinator operator for new credentials ('fedguard site rotate') and use the new bundle",
}
DEFAULT_ADVICE = ("Ask the coordinator operator to check this site with 'fedguard site list' and the gateway log, "
                  "and for a new bundle if needed")


def refusal_reason(exc: BaseException) -> str | None:
    """``"revoked"``, ``"unknown CA"``, ... if ``exc`` is the gateway refusing our certificate; else ``None``."""
    return REFUSALS.get(str(getattr(exc, "reason", ""))) if isinstance(exc, ssl.SSLError) else None


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
    """``127.0.0.1:port`` (TLS, loopback certificate) → gateway (mutual TLS, site certificate).

    ``max_refused``: refused handshakes in a row after which :attr:`refused`
    is set (see the module docstring).
    """

    def __init__(self, *, gateway_host: str, gateway_port: int, gateway_ctx: ssl.SSLContext,
                 loopback_ctx: ssl.SSLContext, port: int = 0, max_refused: int = DEFAULT_MAX_REFUSED) -> None:
        if max_refused < 1:
            raise ValueError(f"max_refused must be at least 1, got {max_refused}")
        self.gateway = (gateway_host, gateway_port)
        self.max_refused = max_refused
        self._gateway_ctx = gateway_ctx
        self._refusals = 0
        self._refused_reason: str | None = None
        self.refused_event = threading.Event()
        self.server = RelayServer("forwarder", "127.0.0.1", port, self._handle, tls=lambda: loopback_ctx)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def refused(self) -> str | None:
        """The reason (``"revoked"``, ``"unknown CA"``, ...) once ``max_refused`` handshakes in a row were refused."""
        return self._refused_reason if self.refused_event.is_set() else None

    def _on_refused(self, reason: str) -> None:
        self._refusals += 1
        logger.error("the coordinator refused this site's certificate: %s (%d of %d refused handshakes in a row). "
                     "%s; this agent stops after %d refused handshakes", reason, self._refusals, self.max_refused,
                     ADVICE.get(reason, DEFAULT_ADVICE), self.max_refused)
        if self._refusals >= self.max_refused and not self.refused_event.is_set():
            self._refused_reason = reason
            self.refused_event.set()

    def _check(self, exc: BaseException) -> bool:
        """Count ``exc`` if it is a refusal of our certificate; ``True`` if it was."""
        reason = refusal_reason(exc)
        if reason is not None:
            self._on_refused(reason)
        return reason is not None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.gateway, ssl=self._gateway_ctx, server_hostname=self.gateway[0],
                                        limit=1 << 20), CONNECT_TIMEOUT)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
            if not self._check(exc):  # TLS 1.2: the refusal ends the handshake
                logger.warning("forwarder: cannot reach the coordinator's gateway %s:%d: %s", *self.gateway,
                               getattr(exc, "reason", None) or exc)
            return
        await asyncio.gather(pump(reader, up_writer), self._pump_back(up_reader, writer))

    async def _pump_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The gateway's answers to the SuperNode; a TLS 1.3 refusal surfaces on the first read."""
        try:
            while data := await reader.read(CHUNK):
                self._refusals = 0  # the coordinator answered: accepted
                writer.write(data)
                await writer.drain()
        except ssl.SSLError as exc:
            self._check(exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await close(writer)

    def probe(self, *, timeout: float = CONNECT_TIMEOUT, settle: float = 2.0) -> str | None:
        """One handshake with the gateway now: why it refuses this site's certificate, or ``None``.

        For a SuperNode that exited on its own: Flower's SuperNode gives up
        once the SuperLink unregisters its node key, which a revocation does
        at the same moment as the gateway starts refusing the certificate,
        so the forwarder may not have seen ``max_refused`` refusals yet.
        Under TLS 1.3 the gateway's alert arrives after the handshake, hence
        one read of up to ``settle`` seconds; no byte is sent. A network
        failure is no refusal (``None``).
        """
        try:
            with socket.create_connection(self.gateway, timeout=timeout) as raw, \
                    self._gateway_ctx.wrap_socket(raw, server_hostname=self.gateway[0]) as tls:
                tls.settimeout(settle)
                tls.recv(1)
        except ssl.SSLError as exc:
            return refusal_reason(exc)
        except OSError:  # TimeoutError included: the gateway kept the connection open, so it accepted us
            return None
        return None

    def start(self) -> Forwarder:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
