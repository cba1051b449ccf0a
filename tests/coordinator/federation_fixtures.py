"""Shared helpers for federation tests: a provisioned federation, site credentials on disk, TLS clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from coordinator.provisioning import FederationLayout, SiteRegistry, init_federation
from coordinator.provisioning.authority import create_ca, issue_site_certificate
from federation.bundle import SiteBundle
from federation.streams import RelayServer
from lifecycle.registry import Registry
from lifecycle.settings import Settings


@dataclass
class Federation:
    home: Path
    layout: FederationLayout
    registry: Registry
    sites: SiteRegistry

    def enroll(self, name: str) -> SiteBundle:
        return self.sites.enroll(name, self.home.parent / f"{name}.bundle")


def make_federation(root: Path, name: str = "cardio") -> Federation:
    home = root / "home"
    layout = init_federation(home, name, hosts=("coord.example",), addresses=("10.0.0.5",))
    registry = Registry.open(Settings(home=home))
    return Federation(home, layout, registry, SiteRegistry(registry, layout))


def credential_files(bundle: SiteBundle, folder: Path) -> tuple[Path, Path, Path]:
    """``(ca, cert, key)`` files of a bundle (tests only: the agent keeps them in a 0700 temp dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.crt", folder / f"{bundle.site}.crt", folder / f"{bundle.site}.key"
    for path, text in zip(paths, (bundle.ca_cert, bundle.site_cert, bundle.site_key), strict=True):
        path.write_text(text)
    paths[2].chmod(0o600)
    return paths


def foreign_credentials(folder: Path) -> tuple[Path, Path]:
    """A certificate with CN of a real site but signed by another CA."""
    ca = create_ca("impostor")
    pair = issue_site_certificate(ca, "impostor", "st-marys")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "foreign.crt").write_bytes(pair.cert_pem)
    (folder / "foreign.key").write_bytes(pair.key_pem)
    return folder / "foreign.crt", folder / "foreign.key"


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def https_request(ctx: ssl.SSLContext, port: int, path: str = "/v1/fleet/ping", body: bytes = b"") -> bytes:
    """Send one POST over TLS to 127.0.0.1:port; return the raw response (raises ssl.SSLError if refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data


def fake_superlink(layout: FederationLayout) -> RelayServer:
    """A TLS HTTP server on loopback standing in for the SuperLink: answers 200 and echoes the path and body."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(layout.server_cert, layout.server_key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode().split("\r\n")
            length = next((int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")), 0)
            body = await reader.readexactly(length)
            reply = lines[0].split(" ")[1].encode() + b" " + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
            await writer.drain()
            if b"connection: close" in head.lower():
                return

    return RelayServer("fake-superlink", "127.0.0.1", 0, handle, tls=lambda: ctx)
