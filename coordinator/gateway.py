"""The coordinator's mutual-TLS gateway in front of the SuperLink's Fleet API.

Flower 1.41's SuperLink serves its Fleet, Control and Runtime (ServerAppIo)
APIs over one HTTPS port with server-side TLS only; SuperNode authentication
is a signature inside each request. So a site without a certificate, with one
from another CA, or with a revoked one reaches Flower's HTTP stack, and anyone
who reaches that port also reaches the Control API (register nodes, start and
stop runs). fedguard therefore binds the SuperLink to loopback and puts this
gateway on the only port open to the network ("wrap, add what they lack"):

1. **Transport layer**: TLS 1.2+ with AEAD cipher suites only
   (:data:`TLS12_CIPHERS`: ECDHE with AES-GCM or ChaCha20-Poly1305; every
   TLS 1.3 suite is AEAD) and ``CERT_REQUIRED``, trusting only the
   federation CA, with the federation's CRL loaded (``VERIFY_CRL_CHECK_LEAF``)
   so that an unknown, foreign or revoked certificate fails the handshake
   itself. The SSL context is rebuilt whenever ``crl.pem`` changes, so a
   ``fedguard site revoke`` takes effect at the next connection without a
   restart; each accepted connection's serial is also checked against the
   site registry (belt and braces for the moment between the registry commit
   and the new CRL).
2. **Application filter**: each HTTP/1.1 request line is read and only
   ``/v1/fleet/...`` is forwarded; the Control and Runtime APIs stay
   reachable from loopback only. Requests with ``Transfer-Encoding`` or a
   missing/duplicated ``Content-Length`` are refused (no request smuggling).
3. **Upstream**: forwarded over Flower's own TLS to the SuperLink on loopback,
   verifying the coordinator certificate against the federation CA, so
   Flower's TLS stays on; Flower's SuperNode authentication still has to pass
   after the gateway (both layers must agree).

Every refusal is logged once, with the peer address, the reason (revoked,
unknown CA, no certificate, a serial of no active site) and the subject CN
of the certificate the client presented, when it presented one. A refused
handshake has no verified peer certificate to read, so the context's message
callback keeps the first certificate of the client's ``Certificate`` message
(:func:`observe_handshake`) for that log line only; it is never trusted for
anything else. A certificate replaced by ``fedguard site rotate`` is logged as
a rotation ("the site must use its new bundle"), not as a revocation.

Notes
-----
Revocation by CRL is RFC 5280 §5; enforcing it in the handshake follows the
usual mTLS-terminating-proxy design (e.g. Envoy's ``crl`` in
``CertificateValidationContext``). With TLS 1.3 the server checks the client
certificate after the client's Finished message (RFC 8446 §4.4.2), so a
refused client sees the alert (``certificate revoked``, ``unknown ca``,
``certificate required``) on its first read rather than inside
``do_handshake``; no application byte is ever exchanged either way.

The TLS 1.2 suites are limited to ECDHE key exchange (forward secrecy) with
AEAD encryption, as the Mozilla "intermediate" configuration and RFC 9325
§4.2 recommend: the CBC suites OpenSSL would otherwise enable
(``ECDHE-ECDSA-AES256-SHA384``, ``...-AES128-SHA256``) are MAC-then-encrypt,
the construction behind padding-oracle attacks such as Lucky Thirteen
(AlFardan and Paterson, IEEE S&P 2013).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from coordinator import logger
from federation.streams import RelayServer, close, pump

ALLOWED_PREFIX = "/v1/fleet/"
HANDSHAKE_TIMEOUT = 10.0
MAX_BODY = 1 << 31
Lookup = Callable[[str], "tuple[str, str] | None"]
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305 (TLS 1.3 suites are set apart)."""

ALERTS = {42: "bad certificate", 43: "unsupported certificate", 44: "revoked", 45: "expired",
          46: "certificate unknown", 48: "unknown CA", 116: "no certificate"}
"""TLS alert descriptions (RFC 8446 §6.2) the gateway sends when it refuses a client certificate."""
_HANDSHAKE, _ALERT, _CERTIFICATE, _TLS13 = 22, 21, 11, 0x0304
_SEEN_CERTIFICATE = "fedguard_client_certificate"
_SENT_ALERT = "fedguard_sent_alert"

FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class GatewayTls:
    """The files the gateway reads: federation CA, its server certificate and key, the CRL."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    crl: Path


def server_context(tls: GatewayTls) -> ssl.SSLContext:
    """TLS 1.2+ server context, AEAD suites only.

    It requires a client certificate from the federation CA, CRL enforced.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    ctx.load_verify_locations(cafile=str(tls.ca_cert))
    ctx.load_verify_locations(cafile=str(tls.crl))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    # CPython's message callback (3.8+, underscore but stable): the only way to see a refused client's certificate
    ctx._msg_callback = observe_handshake  # type: ignore[attr-defined]
    return ctx


def first_certificate(message: bytes, *, tls13: bool) -> bytes | None:
    """The DER of the first certificate in a TLS ``Certificate`` handshake message, or ``None`` if malformed.

    TLS 1.3 (RFC 8446 §4.4.2) prefixes the list with a request context and
    follows each entry with extensions; TLS 1.2 (RFC 5246 §7.4.2) does not.
    """
    pos = 4 + (1 + message[4] if tls13 and len(message) > 4 else 0)
    size = int.from_bytes(message[pos + 3:pos + 6], "big")
    der = message[pos + 6:pos + 6 + size]
    return bytes(der) if size and len(der) == size else None


def observe_handshake(conn: object, direction: str, version: int, content_type: int, msg_type: int,
                      data: bytes) -> None:
    """``SSLContext._msg_callback``: keep the client's certificate and the alert sent, on the connection.

    What it keeps is unverified: :meth:`Gateway.describe_refusal` only names it in the log.
    """
    if direction == "read" and content_type == _HANDSHAKE and msg_type == _CERTIFICATE:
        setattr(conn, _SEEN_CERTIFICATE, first_certificate(data, tls13=int(version) == _TLS13))
    elif direction == "write" and content_type == _ALERT:
        setattr(conn, _SENT_ALERT, int(msg_type))


def _printable(text: str) -> str:
    """A peer-chosen name made safe for one log line (printable, at most 64 characters)."""
    return "".join(c if c.isprintable() else "?" for c in text[:64])


def certificate_identity(der: bytes) -> tuple[str, str]:
    """``(serial_hex, common_name)`` of a DER certificate (``("", "")`` if it does not parse)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "", ""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return format(cert.serial_number, "x"), _printable(str(names[0].value)) if names else ""


def refusal_reason(serial: str, name: str, state: tuple[str, str] | None) -> str:
    """The log text for a certificate this federation will not accept (after the TLS layer let it through)."""
    if state is None:
        return f"certificate serial {serial} (CN={name}) is not one this federation issued to an active site"
    site, status = state
    if status == "rotated":
        return f"rotated: old certificate of {site} (serial {serial}) refused; the site must use its new bundle"
    return f"revoked: site {site} (serial {serial}, CN={name}) is revoked"


def upstream_context(ca_cert: Path) -> ssl.SSLContext:
    """Client context for the loopback hop to the SuperLink (verifies the coordinator certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_verify_locations(cafile=str(ca_cert))
    return ctx


def peer_serial(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """``(serial_hex, common_name)`` of the verified client certificate."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return "", ""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return format(cert.serial_number, "x"), str(names[0].value) if names else ""


def parse_head(head: bytes) -> tuple[str, str, int] | None:
    """``(method, path, content_length)`` of a request head, or ``None`` if it is not plain HTTP/1.1."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if version != "HTTP/1.1" or not target.startswith("/"):
        return None
    lengths = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or name != name.strip() or line[0] in " \t":
            return None
        key = name.lower()
        if key == "transfer-encoding":
            return None
        if key == "content-length":
            lengths.append(value.strip())
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        return None
    length = int(lengths[0]) if lengths else 0
    return (method, target, length) if length <= MAX_BODY else None


def allowed(path: str) -> bool:
    """Only the Fleet API, without dot segments or encoded slashes."""
    clean = path.split("?", 1)[0]
    return clean.startswith(ALLOWED_PREFIX) and ".." not in clean and "%" not in clean and "//" not in clean


async def forward_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           client: asyncio.StreamWriter, site: str,
                           refused: Callable[[], str | None] = lambda: None) -> None:
    """Copy HTTP/1.1 requests from ``reader`` to the upstream ``writer``, refusing any outside the Fleet API.

    ``refused`` is asked before each request (``None``: still allowed; else
    the reason to log), so a keep-alive connection opened before a
    revocation or rotation does not outlive it.
    """
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                client.write(BAD_REQUEST)
                return
            parsed = parse_head(head)
            if parsed is None:
                logger.warning("gateway: site %s sent a malformed request; connection closed", site)
                client.write(BAD_REQUEST)
                return
            method, path, length = parsed
            reason = refused()
            if reason is not None:
                logger.warning("gateway: site %s connected, now refused: %s; connection closed", site, reason)
                client.write(FORBIDDEN)
                return
            if not allowed(path):
                logger.warning("gateway: site %s asked for %s %s outside the Fleet API; refused", site, method,
                               path[:120])
                client.write(FORBIDDEN)
                return
            writer.write(head)
            while length:
                chunk = await reader.readexactly(min(length, 1 << 20))
                length -= len(chunk)
                writer.write(chunk)
                await writer.drain()
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return
    finally:
        await close(writer)


class Gateway:
    """The mutual-TLS gateway: ``listen`` → (mTLS, CRL, registry check, Fleet-only) → SuperLink on loopback.

    Parameters
    ----------
    lookup
        ``serial_hex → (site, status) | None``; normally
        :meth:`coordinator.provisioning.SiteRegistry.credential_state`.
    recheck_interval
        Seconds between re-checks of an open connection's certificate
        against the registry (before a request), so revocation also ends
        keep-alive connections.
    """

    def __init__(self, tls: GatewayTls, *, host: str, port: int, upstream_host: str, upstream_port: int,
                 lookup: Lookup, recheck_interval: float = 2.0) -> None:
        self.tls = tls
        self.recheck_interval = recheck_interval
        self.upstream = (upstream_host, upstream_port)
        self.lookup = lookup
        self._ctx: ssl.SSLContext | None = None
        self._crl_stamp: tuple[int, int] | None = None
        self._upstream_ctx = upstream_context(tls.ca_cert)
        self.server = RelayServer("gateway", host, port, self._handle, tls=self.context,
                                  handshake_timeout=HANDSHAKE_TIMEOUT, describe_refusal=self.describe_refusal)

    @property
    def port(self) -> int:
        return self.server.port

    def context(self) -> ssl.SSLContext:
        """The current server context, rebuilt when the CRL file changed."""
        stat = os.stat(self.tls.crl)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._ctx is None or stamp != self._crl_stamp:
            self._ctx, self._crl_stamp = server_context(self.tls), stamp
            logger.info("gateway: loaded CRL %s", self.tls.crl)
        return self._ctx

    def describe_refusal(self, exc: BaseException, ssl_object: ssl.SSLObject | None) -> str:
        """One log line's worth on a refused handshake: the reason, and whose certificate it was.

        The reason is the alert the gateway sent (revoked, unknown CA, no
        certificate, ...); the name is the presented certificate's subject CN,
        and for one this federation issued, the registry's site and standing
        (a rotated credential is named as such).
        """
        alert = getattr(ssl_object, _SENT_ALERT, None)
        reason = ALERTS.get(alert) if alert is not None else None
        reason = reason or str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
                               or type(exc).__name__)
        der = getattr(ssl_object, _SEEN_CERTIFICATE, None)
        if not der:
            return "no certificate: the client presented none" if reason == "no certificate" else reason
        serial, name = certificate_identity(der)
        if reason == "revoked" and serial:
            state = self.lookup(serial)
            if state is not None:
                return refusal_reason(serial, name, state)
        if reason == "unknown CA":
            return f"unknown CA: certificate CN={name} (serial {serial}) is not from this federation's CA"
        return f"{reason}: certificate CN={name} (serial {serial})"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        serial, name = peer_serial(writer)
        state = self.lookup(serial) if serial else None
        if state is None or state[1] != "active":
            logger.warning("gateway: connection from %s refused: %s", peer,
                           refusal_reason(serial, _printable(name), state))
            return
        site = state[0]
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, ssl=self._upstream_ctx, server_hostname=self.upstream[0],
                                        limit=1 << 20), HANDSHAKE_TIMEOUT)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
            logger.error("gateway: cannot reach the SuperLink at %s:%d: %s", *self.upstream, exc)
            return
        logger.info("gateway: site %s connected from %s", site, peer)
        checked = [time.monotonic()]

        def refused() -> str | None:
            if time.monotonic() - checked[0] < self.recheck_interval:
                return None
            checked[0] = time.monotonic()
            current = self.lookup(serial)
            if current is not None and current[1] == "active":
                return None
            return refusal_reason(serial, _printable(name), current)

        await asyncio.gather(forward_requests(reader, up_writer, writer, site, refused),
                             pump(up_reader, writer))

    def start(self) -> Gateway:
        self.context()
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
