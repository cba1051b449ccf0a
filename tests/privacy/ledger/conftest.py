"""One privacy-ledger contract, three backends: the registry on SQLite, a site's own SQLite file,
and the registry on PostgreSQL (a fresh database per test, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle.registry import Registry
from lifecycle.settings import Settings
from privacy.ledger import PrivacyLedger, SiteLedger, coordinator_ledger

ADMIN_URL = os.environ.get("FEDGUARD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

Opener = Callable[[], PrivacyLedger]
"""Opens the ledger under test; calling it again is a restart (a new engine on the same state)."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    name = f"fedguard_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}; start it (see .ci/run)")
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["registry-sqlite", "site-sqlite", pytest.param("registry-postgres", marks=pytest.mark.postgres)])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[PrivacyLedger] = []

    def opener() -> PrivacyLedger:
        if request.param == "site-sqlite":
            ledger: PrivacyLedger = SiteLedger.open(tmp_path / "site" / "ledger.db")
        else:
            url = request.getfixturevalue("pg_url") if request.param == "registry-postgres" else None
            ledger = coordinator_ledger(Registry.open(Settings(home=tmp_path / "home", database_url=url)))
        opened.append(ledger)
        return ledger

    yield opener
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_ledger: Opener) -> PrivacyLedger:
    return open_ledger()
