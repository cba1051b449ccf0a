"""The asyncio relay under the gateway and the forwarder: plain and TLS, no lost ClientHello, alerts sent."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from client.forwarder import loopback_certificate
from federation.streams import RelayServer, pump

pytestmark = pytest.mark.integration


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await pump(reader, writer)


def test_plain_relay_echoes() -> None:
    with RelayServer("echo", "127.0.0.1", 0, _echo) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
            conn.sendall(b"hello")
            assert conn.recv(16) == b"hello"


def test_tls_relay_never_loses_a_client_hello_and_alerts_on_refusal(tmp_path: Path) -> None:
    cert, key = loopback_certificate()
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(tmp_path / "c.pem"))
    with RelayServer("tls-echo", "127.0.0.1", 0, _echo, tls=lambda: server, handshake_timeout=5) as relay:
        for i in range(20):  # the ClientHello is on the wire before the server picks its protocol
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
                with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"%d" % i)
                    assert tls.recv(16) == b"%d" % i
        server.verify_mode = ssl.CERT_REQUIRED  # now every client without a certificate is refused
        server.load_verify_locations(cafile=str(tmp_path / "c.pem"))
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError, match="(?i)certificate required"):
                with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"x")
                    tls.recv(16)
