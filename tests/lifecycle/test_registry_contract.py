"""One registry contract, run against SQLite (default) and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from lifecycle.audit import AuditChainError
from lifecycle.errors import NotFoundError, StateError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from tests.conftest import make_publication


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(backend_settings)
    yield opened
    opened.engine.dispose()


def test_versions_lineage_and_lookups(registry: Registry) -> None:
    first = publish_model(registry, make_publication())
    second = publish_model(registry, make_publication(seed=3))
    assert (first.version, second.version) == (1, 2)
    assert registry.resolve("demo").version == 2
    assert registry.resolve("demo:1").artifact.digest == first.artifact.digest
    assert [s.site for s in registry.resolve("demo:1").sites] == ["site-0", "site-1"]
    assert [r.ref for r in registry.latest_versions()] == ["demo:2"]
    with pytest.raises(NotFoundError):
        registry.resolve("demo:7")


def test_audit_chain_is_written_and_checked(registry: Registry) -> None:
    publish_model(registry, make_publication())
    assert registry.verify_audit_chain() == 5  # publication: 3 events, then 2 gate decisions
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET actor = 'mallory' WHERE action = 'model.created'"))
    with pytest.raises(AuditChainError, match="altered"):
        registry.verify_audit_chain()


def test_state_survives_reopening(backend_settings: Settings, registry: Registry) -> None:
    published = publish_model(registry, make_publication())
    registry.engine.dispose()
    again = Registry.open(backend_settings)
    assert again.resolve("demo").artifact.digest == published.artifact.digest
    again.engine.dispose()


def test_failed_write_leaves_nothing(registry: Registry) -> None:
    publish_model(registry, make_publication())
    with pytest.raises(RuntimeError), registry.transaction() as session:
        from lifecycle import audit

        audit.record(session, "test.half-done", actor="t")
        raise RuntimeError("crash between steps")
    assert registry.verify_audit_chain() == 5


def test_foreign_database_is_refused(backend_settings: Settings) -> None:
    engine = sqlalchemy.create_engine(backend_settings.registry_url)
    if engine.dialect.name == "sqlite":
        Path(backend_settings.home).mkdir(parents=True, exist_ok=True)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id integer)"))
    engine.dispose()
    with pytest.raises(StateError, match="not a fedguard registry"):
        Registry.open(backend_settings)
