"""The site forwarder tells a refused certificate (TLS alert from the gateway) from a network failure.

A real gateway on loopback (in front of a TLS stand-in for the SuperLink)
refuses a revoked site's certificate; the forwarder counts refused handshakes
in a row and reports the site as refused after ``max_refused`` of them, for
TLS 1.3 (alert on the first read) and TLS 1.2 (alert in the handshake). A
gateway that cannot be reached is not a refusal.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.forwarder import Forwarder, gateway_context, loopback_certificate, loopback_context, refusal_reason
from coordinator.gateway import Gateway, GatewayTls
from tests.coordinator.federation_fixtures import credential_files, fake_superlink, make_federation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("forwarder")
    fed = make_federation(root)
    valid = credential_files(fed.enroll("st-marys"), root / "st-marys")
    revoked = credential_files(fed.enroll("guys"), root / "guys")
    fed.sites.revoke("guys")
    cert, key = loopback_certificate()
    (root / "loop.crt").write_bytes(cert)
    (root / "loop.key").write_bytes(key)
    upstream = fake_superlink(fed.layout).start()
    layout = fed.layout
    gateway = Gateway(GatewayTls(layout.ca_cert, layout.server_cert, layout.server_key, layout.crl),
                      host="127.0.0.1", port=0, upstream_host="127.0.0.1", upstream_port=upstream.port,
                      lookup=fed.sites.credential_state).start()
    yield {"root": root, "valid": valid, "revoked": revoked, "gateway": gateway}
    gateway.stop()
    upstream.stop()


def _forwarder(world: dict[str, object], creds: str, *, port: int | None = None, tls12: bool = False,
               max_refused: int = 2) -> Forwarder:
    root, gateway = world["root"], world["gateway"]
    assert isinstance(root, Path) and isinstance(gateway, Gateway)
    ctx = gateway_context(*world[creds])  # type: ignore[misc]
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return Forwarder(gateway_host="127.0.0.1", gateway_port=port or gateway.port, gateway_ctx=ctx,
                     loopback_ctx=loopback_context(root / "loop.crt", root / "loop.key"),
                     max_refused=max_refused)


def _request(world: dict[str, object], forwarder: Forwarder) -> bytes:
    """One request through the forwarder, as the SuperNode sends it; the answer ('' when the forwarder hung up)."""
    root = world["root"]
    assert isinstance(root, Path)
    ctx = ssl.create_default_context(cafile=str(root / "loop.crt"))
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /v1/fleet/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            try:
                return tls.recv(4096)
            except (ssl.SSLError, ConnectionError):
                return b""


@pytest.mark.parametrize("tls12", [False, True])
def test_a_revoked_site_is_reported_refused_after_max_refused_handshakes(
        world: dict[str, object], tls12: bool, caplog: pytest.LogCaptureFixture) -> None:
    with _forwarder(world, "revoked", tls12=tls12) as forwarder:
        assert _request(world, forwarder) == b""
        assert forwarder.refused is None  # one refusal of two
        assert _request(world, forwarder) == b""
        assert forwarder.refused == "revoked" and forwarder.refused_event.is_set()
    lines = [r.getMessage() for r in caplog.records if "refused this site's certificate" in r.getMessage()]
    assert len(lines) == 2 and "revoked (2 of 2 refused handshakes in a row)" in lines[1]
    assert "fedguard site rotate" in lines[1] and "stops after 2 refused handshakes" in lines[1]


def test_an_accepted_site_is_never_refused(world: dict[str, object]) -> None:
    with _forwarder(world, "valid") as forwarder:
        for _ in range(3):
            assert _request(world, forwarder).startswith(b"HTTP/1.1 200")
        assert forwarder.refused is None


def test_an_unreachable_gateway_is_not_a_refusal(world: dict[str, object]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with _forwarder(world, "revoked", port=closed, max_refused=1) as forwarder:
        for _ in range(2):
            assert _request(world, forwarder) == b""
        assert forwarder.refused is None


def test_only_certificate_alerts_count_as_refusals() -> None:
    revoked = ssl.SSLError(1, "alert")
    revoked.reason = "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert refusal_reason(revoked) == "revoked"
    other = ssl.SSLError(1, "verify")
    other.reason = "CERTIFICATE_VERIFY_FAILED"  # we refused the coordinator: not a refusal
    assert refusal_reason(other) is None
    assert refusal_reason(ConnectionResetError()) is None
