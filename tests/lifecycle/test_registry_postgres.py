"""The registry contract against PostgreSQL (127.0.0.1:5432), in a database of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from tests.conftest import make_publication

pytestmark = [pytest.mark.postgres, pytest.mark.integration]





def test_publish_resolve_and_audit_on_postgres(pg_url: str, tmp_path: Path) -> None:
    registry = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    first = publish_model(registry, make_publication())
    second = publish_model(registry, make_publication(seed=3))
    assert (first.version, second.version) == (1, 2)
    assert registry.resolve("demo:1").sites[0].site == "site-0"
    assert registry.verify_audit_chain() == 5
    registry.engine.dispose()
    again = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    assert again.resolve("demo").version == 2
    again.engine.dispose()


def test_foreign_postgres_database_is_refused(pg_url: str, tmp_path: Path) -> None:
    import sqlalchemy

    from lifecycle.errors import StateError

    engine = sqlalchemy.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id int)")
    engine.dispose()
    with pytest.raises(StateError, match="not a fedguard registry"):
        Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
