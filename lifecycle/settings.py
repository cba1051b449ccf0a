"""Where fedguard keeps its state, read from the environment.

``FEDGUARD_HOME`` (default ``./.fedguard``) holds the registry, artifacts, keys
and audit exports; ``FEDGUARD_DATABASE_URL`` points the registry at another
database (e.g. PostgreSQL). Settings are obtained through the cached
:func:`get_settings` so that tests can override the environment and call
``get_settings.cache_clear()``.

:func:`is_loopback` lives here because both the serving tier (a plain-HTTP bind
warning) and the coordinator (``--insecure`` refusal) decide with it, and
``lifecycle`` is the one package both may import (DESIGN.md §3).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """State locations shared by every fedguard command."""

    model_config = SettingsConfigDict(env_prefix="FEDGUARD_", extra="ignore")

    home: Path = Path(".fedguard")
    database_url: str | None = None
    audit_checkpoint_every: int = 100
    """Sign a checkpoint of the audit chain after this many new events (``lifecycle.audit.checkpoints``)."""

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ``::1``).

    Surrounding whitespace and the brackets of an IPv6 literal (``[::1]``) are
    ignored. Names other than ``localhost`` count as exposed: they may resolve
    to any interface, and a wrong guess here would skip a TLS warning or let
    ``--insecure`` through on a public address.
    """
    bare = host.strip().strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False
