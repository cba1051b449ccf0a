"""Where fedguard keeps its state, read from the environment.

``FEDGUARD_HOME`` (default ``./.fedguard``) holds the registry, artifacts, keys
and audit exports; ``FEDGUARD_DATABASE_URL`` points the registry at another
database (e.g. PostgreSQL). Settings are obtained through the cached
:func:`get_settings` so that tests can override the environment and call
``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """State locations shared by every fedguard command."""

    model_config = SettingsConfigDict(env_prefix="FEDGUARD_", extra="ignore")

    home: Path = Path(".fedguard")
    database_url: str | None = None

    @property
    def registry_url(self) -> str:
        """SQLAlchemy URL of the registry: the override, else SQLite in the home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests clear the cache)."""
    return Settings()
