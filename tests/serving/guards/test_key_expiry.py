"""API key expiry: refused like a revoked key once due, parsed from the CLI, added by migration 0003."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.database import MIGRATIONS, create_registry_engine
from lifecycle.settings import Settings
from serving import cli
from serving.app import create_app
from serving.guards.keys import (
    AuthenticationError,
    authenticate,
    create_key,
    hash_secret,
    list_keys,
    parse_duration,
    revoke_key,
)
from serving.settings import ServingSettings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
GOOD = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
T0 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
runner = CliRunner()
cli_app = typer.Typer()
cli_app.add_typer(cli.keys_app, name="keys")


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def test_create_key_records_expiry_from_the_injected_now(registry: Registry) -> None:
    created = create_key(registry, "predict", "ci", expires_in=timedelta(hours=12), now=T0)
    assert created.info.expires_at == T0 + timedelta(hours=12)
    [listed] = list_keys(registry)
    assert listed.expires_at == T0 + timedelta(hours=12) and listed.expires_at.tzinfo is not None
    assert create_key(registry, "predict").info.expires_at is None


def test_authenticate_refuses_an_expired_key_and_says_so_for_the_log(registry: Registry) -> None:
    created = create_key(registry, "predict", expires_in=timedelta(minutes=90), now=T0)
    assert authenticate(registry, created.key, now=T0 + timedelta(minutes=89)).key_id == created.info.key_id
    with pytest.raises(AuthenticationError, match="expired"):
        authenticate(registry, created.key, now=T0 + timedelta(minutes=90))
    past = create_key(registry, "predict", expires_in=timedelta(minutes=1), now=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(AuthenticationError, match="expired"):
        authenticate(registry, past.key)  # no now=: the current time, long after 2020


@pytest.mark.parametrize("lifetime", [timedelta(0), timedelta(seconds=-1)])
def test_create_key_refuses_a_lifetime_that_is_not_positive(registry: Registry, lifetime: timedelta) -> None:
    with pytest.raises(ConfigurationError, match="positive"):
        create_key(registry, "predict", expires_in=lifetime, now=T0)


def test_api_refuses_an_expired_key_exactly_like_a_revoked_one(
    registry: Registry, published: VersionRecord, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    key = create_key(registry, "predict", expires_in=timedelta(days=30), now=T0)
    revoked = create_key(registry, "predict", now=T0)
    revoke_key(registry, revoked.info.key_id)
    settings = ServingSettings(max_instances=8, max_body_bytes=4096)
    with TestClient(create_app(registry, settings, clock=clock)) as client:
        clock.now = (T0 + timedelta(days=30) - timedelta(seconds=1)).timestamp()
        assert client.post(PREDICT, json=GOOD, headers=bearer(key)).status_code == 200
        clock.now = (T0 + timedelta(days=30)).timestamp()
        with caplog.at_level(logging.WARNING, logger="fedguard.serving"):
            expired = client.post(PREDICT, json=GOOD, headers=bearer(key))
        gone = client.post(PREDICT, json=GOOD, headers=bearer(revoked))
    assert expired.status_code == gone.status_code == 401
    assert expired.json() == gone.json()
    assert expired.headers["WWW-Authenticate"] == gone.headers["WWW-Authenticate"]
    assert "expired" not in expired.text
    assert any("expired" in record.getMessage() and key.info.key_id in record.getMessage()
               for record in caplog.records)
    assert not any(key.key in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
    (" 1d ", timedelta(days=1)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "30s", "1w", "30 d", "3651d", "1d2h", "9999999d"])
def test_parse_duration_refuses_bad_input(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(text)


def test_cli_create_with_expiry_and_list_shows_it(registry: Registry) -> None:
    result = runner.invoke(cli_app, ["keys", "create", "--expires-in", "12h", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expires_at = datetime.fromisoformat(data["expires_at"])
    created_at = datetime.fromisoformat(data["created_at"])
    assert expires_at - created_at == timedelta(hours=12)
    runner.invoke(cli_app, ["keys", "create"])
    listed = json.loads(runner.invoke(cli_app, ["keys", "list", "--json"]).stdout)
    assert [k["expires_at"] is None for k in listed] == [False, True]
    table = runner.invoke(cli_app, ["keys", "list"])
    assert table.exit_code == 0 and "expires" in table.stdout and "never" in table.stdout
    human = runner.invoke(cli_app, ["keys", "create", "--expires-in", "90m"])
    assert human.exit_code == 0 and "expires at" in human.stdout


@pytest.mark.parametrize("bad", ["soon", "30", "0h", "12x"])
def test_cli_create_refuses_a_bad_duration(registry: Registry, bad: str) -> None:
    result = runner.invoke(cli_app, ["keys", "create", "--expires-in", bad])
    assert isinstance(result.exception, ConfigurationError) and result.exception.exit_code == 2
    assert "30d" in str(result.exception)
    assert list_keys(registry) == []


def test_migration_0003_upgrades_a_0002_registry_with_keys(fedguard_home: Path) -> None:
    settings = Settings(home=fedguard_home)
    fedguard_home.mkdir(parents=True, exist_ok=True)
    engine = create_registry_engine(settings.registry_url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    with engine.begin() as conn:
        assert "expires_at" not in {c["name"] for c in inspect(conn).get_columns("api_key")}
        conn.execute(
            text("INSERT INTO api_key (key_id, key_hash, scope, name, revoked, created_at) "
                 "VALUES (:key_id, :key_hash, 'predict', 'old', 0, :created_at)"),
            {"key_id": "0123456789abcdef", "key_hash": hash_secret("s" * 43), "created_at": T0},
        )
    engine.dispose()
    registry = Registry.open(settings)
    with registry.engine.connect() as conn:
        head = ScriptDirectory.from_config(config).get_current_head()  # 0003 or a later migration
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
        assert "expires_at" in {c["name"] for c in inspect(conn).get_columns("api_key")}
    [old] = list_keys(registry)
    assert old.key_id == "0123456789abcdef" and old.expires_at is None
    info = authenticate(registry, "fgk_0123456789abcdef_" + "s" * 43, now=T0 + timedelta(days=10_000))
    assert info.name == "old"
    new = create_key(registry, "predict", expires_in=timedelta(days=1), now=T0)
    assert authenticate(registry, new.key, now=T0).key_id == new.info.key_id


@pytest.mark.postgres
@pytest.mark.integration
def test_expiry_round_trips_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    registry = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    try:
        created = create_key(registry, "predict", expires_in=timedelta(days=30), now=T0)
        [listed] = list_keys(registry)
        assert listed.expires_at == T0 + timedelta(days=30)
        assert authenticate(registry, created.key, now=T0 + timedelta(days=29)).key_id == created.info.key_id
        with pytest.raises(AuthenticationError, match="expired"):
            authenticate(registry, created.key, now=T0 + timedelta(days=30))
    finally:
        registry.engine.dispose()
