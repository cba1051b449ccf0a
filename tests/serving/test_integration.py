"""A real uvicorn server on a free loopback port, called over HTTP(S) with httpx."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.cli import uvicorn_options
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.serving.conftest import bearer

pytestmark = pytest.mark.integration
BODY = {"instances": [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]}


@contextmanager
def serving(app: FastAPI, settings: ServingSettings | None = None) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a socket bound to port 0 (the OS picks: safe under -n auto); yield the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # log_config None: uvicorn leaves this test process's logging (pytest's capture) alone;
    # the subprocess tests (tests/e2e/test_quickstart.py) run `fedguard serve`'s own configuration.
    options = {**uvicorn_options(settings or ServingSettings()), "log_level": "warning", "log_config": None}
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def running(registry: Registry, settings: ServingSettings, clock: Callable[[], float] = time.time) -> Iterator[int]:
    """Build the app over ``registry`` and serve it (see :func:`serving`); yield the port."""
    with serving(create_app(registry, settings, clock=clock), settings) as port:
        yield port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_real_server_answers_over_http(registry: Registry, published: VersionRecord) -> None:
    key = create_key(registry, "predict", "integration")
    with running(registry, ServingSettings()) as port, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        denied = http.post("/v1/models/demo/predict", json=BODY)
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        response = http.post("/v1/models/demo/predict", json=BODY, headers=bearer(key))
        assert response.status_code == 200
        data = response.json()
        assert data["model"] == "demo" and data["version"] == 1 and set(data["predictions"]) <= {"no", "yes"}
        assert "server" not in response.headers
        bad = http.post("/v1/models/demo/predict", json={"instances": [[1.0]]}, headers=bearer(key))
        assert bad.status_code == 422 and "instance 0 has 1 values" in bad.json()["error"]["message"]


def test_real_server_terminates_tls(registry: Registry, published: VersionRecord, tmp_path: Path) -> None:
    key = create_key(registry, "predict", "tls")
    cert, private = self_signed(tmp_path)
    settings = ServingSettings(ssl_certfile=cert, ssl_keyfile=private)
    trust = ssl.create_default_context(cafile=str(cert))
    with running(registry, settings) as port, \
            httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=10) as http:
        response = http.post("/v1/models/demo/predict", json=BODY, headers=bearer(key))
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
