"""Fixtures of the lifecycle tests: the registry's backends, one contract suite for each."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.integration])])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for an empty registry on each backend (SQLite in tmp_path, the PostgreSQL test database)."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    url: str = request.getfixturevalue("pg_url")
    return Settings(home=tmp_path / "home", database_url=url)
