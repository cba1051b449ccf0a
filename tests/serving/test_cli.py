"""`fedguard keys ...` and `fedguard serve`, mounted in a local Typer app exactly as ``fedguard.cli`` mounts them."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlmodel import Session, select
from typer.testing import CliRunner

from lifecycle.artifacts import WEIGHTS_NAME
from lifecycle.errors import ConfigurationError, NotFoundError, SignatureError, StateError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import ApiKey
from serving import cli
from serving.guards.keys import authenticate
from tests.serving.test_models import tamper

app = typer.Typer()
app.add_typer(cli.keys_app, name="keys")
app.command("serve")(cli.serve)
runner = CliRunner()


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace uvicorn.run so that serve returns instead of blocking."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    return calls


def test_keys_create_json_prints_the_key_once_and_stores_its_hash(registry: Registry) -> None:
    result = runner.invoke(app, ["keys", "create", "--scope", "predict", "--name", "ci", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["scope"] == "predict" and data["name"] == "ci" and data["key"].startswith("fgk_")
    assert "cannot be shown again" in result.stderr
    assert authenticate(registry, data["key"]).key_id == data["key_id"]
    with Session(registry.engine) as session:
        row = session.exec(select(ApiKey)).one()
    assert data["key"].split("_", 2)[2] not in row.key_hash


def test_keys_create_human_output(registry: Registry) -> None:
    result = runner.invoke(app, ["keys", "create", "--scope", "admin"])
    assert result.exit_code == 0, result.output
    key = next(line for line in result.stdout.splitlines() if line.startswith("fgk_"))
    assert authenticate(registry, key).scope == "admin"
    assert "cannot be shown again" in result.stderr


def test_keys_create_rejects_an_unknown_scope(registry: Registry) -> None:
    result = runner.invoke(app, ["keys", "create", "--scope", "root"])
    assert result.exit_code == 2


def test_keys_list_and_revoke(registry: Registry) -> None:
    created = json.loads(runner.invoke(app, ["keys", "create", "--json"]).stdout)
    revoked = runner.invoke(app, ["keys", "revoke", created["key_id"], "--json"])
    assert json.loads(revoked.stdout)["revoked"] is True
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert [(k["key_id"], k["revoked"]) for k in listed] == [(created["key_id"], True)]
    assert "key" not in listed[0] and "key_hash" not in listed[0]
    assert created["key_id"] in runner.invoke(app, ["keys", "list"]).stdout


def test_keys_revoke_unknown_propagates_not_found(registry: Registry) -> None:
    result = runner.invoke(app, ["keys", "revoke", "0123456789abcdef"])
    assert isinstance(result.exception, NotFoundError) and result.exception.exit_code == 4


def test_serve_passes_host_port_and_tls_to_uvicorn(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0",
                                 "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert result.exit_code == 0, result.output
    (call,) = uvicorn_calls
    tls = (call["ssl_certfile"], call["ssl_keyfile"])
    assert (call["host"], call["port"], tls) == ("0.0.0.0", 0, (str(cert), str(key)))
    assert "without TLS" not in result.stderr and "demo" in result.stderr


def test_serve_warns_on_a_non_loopback_bind_without_tls(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]]
) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "not loopback, without TLS" in " ".join(result.stderr.split())
    assert uvicorn_calls[0]["ssl_certfile"] is None


def test_serve_defaults_to_loopback_from_settings(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_PORT", "8123")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert (uvicorn_calls[0]["host"], uvicorn_calls[0]["port"]) == ("127.0.0.1", 8123)
    assert "Warning" not in result.stderr


def test_serve_refuses_a_tampered_model_before_binding(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]]
) -> None:
    tamper(published.artifact.model_dir / WEIGHTS_NAME)
    result = runner.invoke(app, ["serve"])
    assert isinstance(result.exception, SignatureError) and result.exception.exit_code == 5
    assert WEIGHTS_NAME in str(result.exception)
    assert uvicorn_calls == []


def test_serve_refuses_an_empty_registry(registry: Registry, uvicorn_calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["serve"])
    assert isinstance(result.exception, NotFoundError) and uvicorn_calls == []


@pytest.mark.parametrize(
    "args", [["--port", "70000"], ["--ssl-keyfile", "key.pem"], ["--ssl-certfile", "/nonexistent/cert.pem"]]
)
def test_serve_rejects_bad_options(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]], args: list[str]
) -> None:
    result = runner.invoke(app, ["serve", *args])
    assert isinstance(result.exception, ConfigurationError) and uvicorn_calls == []


def test_serve_refuses_an_unreachable_redis_quota_store_before_binding(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FEDGUARD_SERVE_QUOTA_BACKEND", "redis")
    monkeypatch.setenv("FEDGUARD_SERVE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    result = runner.invoke(app, ["serve"])
    assert isinstance(result.exception, StateError) and result.exception.exit_code == 3
    assert uvicorn_calls == []


def test_serve_refuses_a_top_k_above_the_classes(
    published: VersionRecord, uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_OUTPUTS", '{"demo": {"output_mode": "top-k", "top_k": 5}}')
    result = runner.invoke(app, ["serve"])
    assert isinstance(result.exception, ConfigurationError) and result.exception.exit_code == 2
    assert uvicorn_calls == []
