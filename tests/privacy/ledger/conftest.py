"""One privacy-ledger contract, three backends: the registry on SQLite, a site's own SQLite file,
and the registry on PostgreSQL (a fresh database per test, dropped afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle.registry import Registry
from lifecycle.settings import Settings
from privacy.ledger import PrivacyLedger, SiteLedger, coordinator_ledger

Opener = Callable[[], PrivacyLedger]
"""Opens the ledger under test; calling it again is a restart (a new engine on the same state)."""




@pytest.fixture(params=["registry-sqlite", "site-sqlite",
                        pytest.param("registry-postgres", marks=pytest.mark.postgres)])
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
