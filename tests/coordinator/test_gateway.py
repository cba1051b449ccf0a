"""Point 5c: the mutual-TLS gateway refuses revoked, foreign and certificate-less clients at the TLS layer.

Each refusal is checked with Python's ``ssl`` and with ``openssl s_client``
against a real gateway on loopback forwarding to a TLS stand-in for the
SuperLink (the real SuperLink behind the gateway is in
tests/integration/test_site_transport.py).
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.gateway import Gateway, GatewayTls, first_certificate, parse_head, server_context
from tests.coordinator.federation_fixtures import (
    Federation,
    client_context,
    credential_files,
    fake_superlink,
    foreign_credentials,
    https_request,
    make_federation,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("gateway")
    fed = make_federation(root)
    valid = credential_files(fed.enroll("st-marys"), root / "st-marys")
    revoked = credential_files(fed.enroll("guys"), root / "guys")
    fed.sites.revoke("guys")
    foreign = foreign_credentials(root / "foreign")
    upstream = fake_superlink(fed.layout).start()
    layout = fed.layout
    gateway = Gateway(GatewayTls(layout.ca_cert, layout.server_cert, layout.server_key, layout.crl),
                      host="127.0.0.1", port=0, upstream_host="127.0.0.1", upstream_port=upstream.port,
                      lookup=fed.sites.credential_state, recheck_interval=0.0).start()
    yield {"fed": fed, "root": root, "valid": valid, "revoked": revoked, "foreign": foreign, "gateway": gateway}
    gateway.stop()
    upstream.stop()


def _port(world: dict[str, object]) -> int:
    gateway = world["gateway"]
    assert isinstance(gateway, Gateway)
    return gateway.port


def test_valid_site_certificate_reaches_the_fleet_api(world: dict[str, object]) -> None:
    ca, cert, key = world["valid"]  # type: ignore[misc]
    response = https_request(client_context(ca, cert, key), _port(world), "/v1/fleet/pull-messages", b"abc")
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"/v1/fleet/pull-messages abc")


def test_control_and_runtime_apis_are_not_reachable_through_the_gateway(world: dict[str, object]) -> None:
    ca, cert, key = world["valid"]  # type: ignore[misc]
    for path in ("/v1/control/register-node", "/v1/fleet/../control/list-nodes", "/docs"):
        assert https_request(client_context(ca, cert, key), _port(world), path).startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize("case, reason", [("revoked", "REVOKED"), ("foreign", "UNKNOWN_CA"),
                                          ("none", "CERTIFICATE_REQUIRED")])
def test_refused_at_the_tls_layer_with_python_ssl(world: dict[str, object], case: str, reason: str) -> None:
    ca = world["valid"][0]  # type: ignore[index]
    if case == "revoked":
        ctx = client_context(*world["revoked"])  # type: ignore[misc]
    elif case == "foreign":
        ctx = client_context(ca, *world["foreign"])  # type: ignore[misc]
    else:
        ctx = client_context(ca)
    with pytest.raises(ssl.SSLError) as info:
        https_request(ctx, _port(world))
    assert reason in str(info.value).upper()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_agrees(world: dict[str, object], version: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for this check (it is on the reference machine)")
    ca, cert, key = world["valid"]  # type: ignore[misc]
    _, rcert, rkey = world["revoked"]  # type: ignore[misc]
    fcert, fkey = world["foreign"]  # type: ignore[misc]
    request = b"POST /v1/fleet/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    def s_client(*extra: object) -> str:
        done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{_port(world)}", "-CAfile", str(ca),
                               "-verify_return_error", "-ign_eof", version, *map(str, extra)],
                              input=request, capture_output=True, timeout=30)
        return (done.stdout + done.stderr).decode(errors="replace")

    assert "HTTP/1.1 200 OK" in s_client("-cert", cert, "-key", key)
    for out, alert in ((s_client("-cert", rcert, "-key", rkey), "certificate revoked"),
                       (s_client("-cert", fcert, "-key", fkey), "unknown ca"),
                       (s_client(), "certificate required" if version == "-tls1_3" else "handshake failure")):
        assert alert in out and "HTTP/1.1" not in out, out[-600:]


# The CBC suites review found offered (ECDSA server key: ECDHE-ECDSA-*), and AEAD ones.
CBC_SUITES = ["ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA",
              "ECDHE-ECDSA-AES128-SHA"]
AEAD_SUITES = ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]


@pytest.mark.parametrize("suite", CBC_SUITES + AEAD_SUITES)
def test_tls12_offers_aead_suites_only(world: dict[str, object], suite: str) -> None:
    """``openssl s_client -tls1_2 -cipher SUITE``: a CBC (MAC-then-encrypt) suite is refused, an AEAD one works."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for this check (it is on the reference machine)")
    ca, cert, key = world["valid"]  # type: ignore[misc]
    request = b"POST /v1/fleet/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{_port(world)}", "-CAfile", str(ca),
                           "-verify_return_error", "-ign_eof", "-tls1_2", "-cipher", suite, "-cert", str(cert),
                           "-key", str(key)], input=request, capture_output=True, timeout=30, check=False)
    out = (done.stdout + done.stderr).decode(errors="replace")
    if suite in AEAD_SUITES:
        assert "HTTP/1.1 200 OK" in out and f"Cipher is {suite}" in out, out[-600:]
    else:
        assert "handshake failure" in out and "HTTP/1.1" not in out, out[-600:]


def test_every_suite_the_gateway_enables_is_aead(world: dict[str, object]) -> None:
    """TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305, and TLS 1.3 (AEAD by definition), nothing else."""
    fed = world["fed"]
    assert isinstance(fed, Federation)
    layout = fed.layout
    tls = GatewayTls(layout.ca_cert, layout.server_cert, layout.server_key, layout.crl)
    ciphers = server_context(tls).get_ciphers()
    assert ciphers and all(c["aead"] for c in ciphers), [c["name"] for c in ciphers if not c["aead"]]
    assert all(c["protocol"] == "TLSv1.3" or c["kea"] == "kx-ecdhe" for c in ciphers)
    assert {c["protocol"] for c in ciphers} == {"TLSv1.2", "TLSv1.3"}


def test_rotation_takes_effect_without_restarting_the_gateway(world: dict[str, object]) -> None:
    fed = world["fed"]
    assert isinstance(fed, Federation)
    root = world["root"]
    assert isinstance(root, Path)
    old = credential_files(fed.enroll("barts"), root / "barts-old")
    assert https_request(client_context(*old), _port(world)).startswith(b"HTTP/1.1 200")
    new = credential_files(fed.sites.rotate("barts", root / "barts-2.bundle"), root / "barts-new")
    with pytest.raises(ssl.SSLError, match="(?i)revoked"):
        https_request(client_context(*old), _port(world))
    assert https_request(client_context(*new), _port(world)).startswith(b"HTTP/1.1 200")
    ca, cert, key = world["valid"]  # type: ignore[misc]
    assert https_request(client_context(ca, cert, key), _port(world)).startswith(b"HTTP/1.1 200")


def test_request_heads_that_could_smuggle_are_refused() -> None:
    assert parse_head(b"POST /v1/fleet/x HTTP/1.1\r\nContent-Length: 3\r\n\r\n") == ("POST", "/v1/fleet/x", 3)
    assert parse_head(b"POST /v1/fleet/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") is None
    assert parse_head(b"POST /v1/fleet/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n") is None
    assert parse_head(b"POST /v1/fleet/x HTTP/1.0\r\n\r\n") is None
    assert parse_head(b"POST /v1/fleet/x HTTP/1.1\r\n folded: x\r\n\r\n") is None


def test_revocation_ends_an_open_keep_alive_connection(world: dict[str, object]) -> None:
    fed = world["fed"]
    root = world["root"]
    assert isinstance(fed, Federation) and isinstance(root, Path)
    ca, cert, key = credential_files(fed.enroll("kings"), root / "kings")
    request = b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(world)), timeout=10) as raw:
        with client_context(ca, cert, key).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
            fed.sites.revoke("kings")
            tls.sendall(request)
            assert tls.recv(4096).startswith(b"HTTP/1.1 403")


def _logged(caplog: pytest.LogCaptureFixture, needle: str, timeout: float = 10.0) -> str:
    """The first gateway log line containing ``needle`` (the relay logs from its own thread, after the alert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if needle in (message := record.getMessage()):
                return message
        time.sleep(0.02)
    raise AssertionError(f"no log line with {needle!r}: {[r.getMessage() for r in caplog.records]}")


def test_every_refusal_is_logged_with_its_reason_and_the_certificates_name(
        world: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedguard")
    ca = world["valid"][0]  # type: ignore[index]
    for ctx in (client_context(*world["revoked"]), client_context(ca, *world["foreign"]),  # type: ignore[misc]
                client_context(ca)):
        with pytest.raises(ssl.SSLError):
            https_request(ctx, _port(world))
    assert "site guys (serial" in _logged(caplog, "refused: revoked: site guys")
    assert "CN=st-marys" in _logged(caplog, "refused: unknown CA: certificate CN=st-marys")
    _logged(caplog, "refused: no certificate: the client presented none")


def test_a_rotated_certificate_is_logged_as_a_rotation_not_a_revocation(
        world: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    fed, root = world["fed"], world["root"]
    assert isinstance(fed, Federation) and isinstance(root, Path)
    caplog.set_level(logging.INFO, logger="fedguard")
    old = credential_files(fed.enroll("lister"), root / "lister-old")
    request = b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(world)), timeout=10) as raw:
        with client_context(*old).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
            fed.sites.rotate("lister", root / "lister-2.bundle")
            tls.sendall(request)  # the open connection: closed as a rotation
            assert tls.recv(4096).startswith(b"HTTP/1.1 403")
    with pytest.raises(ssl.SSLError, match="(?i)revoked"):  # a new handshake: the CRL refuses it
        https_request(client_context(*old), _port(world))
    expected = "rotated: old certificate of lister (serial"
    assert "the site must use its new bundle" in _logged(caplog, "site lister connected, now refused: " + expected)
    assert "the site must use its new bundle" in _logged(caplog, "refused: " + expected)
    assert not [r for r in caplog.records if "lister" in r.getMessage() and "revoked" in r.getMessage()]


def test_first_certificate_reads_tls12_and_tls13_messages_and_survives_garbage() -> None:
    der = b"\x30\x03abc"
    entry = len(der).to_bytes(3, "big") + der
    tls12 = b"\x0b" + (3 + len(entry)).to_bytes(3, "big") + len(entry).to_bytes(3, "big") + entry
    tls13 = (b"\x0b" + (4 + len(entry) + 2).to_bytes(3, "big") + b"\x00"
             + (len(entry) + 2).to_bytes(3, "big") + entry + b"\x00\x00")
    assert first_certificate(tls12, tls13=False) == der
    assert first_certificate(tls13, tls13=True) == der
    for junk in (b"", b"\x0b\x00\x00\x04\x00\x00\x00\x00", b"\x0b\x00\x00\x04\x00\x00\x00\x09ab"):
        assert first_certificate(junk, tls13=True) is None and first_certificate(junk, tls13=False) is None


def test_a_ca_signed_certificate_the_registry_never_issued_is_refused_and_logged(
        world: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    from coordinator.provisioning.authority import issue_site_certificate

    fed, root = world["fed"], world["root"]
    assert isinstance(fed, Federation) and isinstance(root, Path)
    caplog.set_level(logging.INFO, logger="fedguard")
    pair = issue_site_certificate(fed.layout.ca(), "cardio", "ghost")  # signed by the CA, never registered
    (root / "ghost.crt").write_bytes(pair.cert_pem)
    (root / "ghost.key").write_bytes(pair.key_pem)
    ca = world["valid"][0]  # type: ignore[index]
    assert https_request(client_context(ca, root / "ghost.crt", root / "ghost.key"), _port(world)) == b""
    line = _logged(caplog, "(CN=ghost) is not one this federation issued to an active site")
    assert "connection from" in line
