"""Opening a privacy ledger: the coordinator's (registry database) or a site's own (SQLite file)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import SQLModel

from lifecycle.errors import StateError
from lifecycle.registry import Registry
from lifecycle.registry.database import create_registry_engine
from lifecycle.registry.tables import AuditEvent
from privacy.ledger.sql import PostgresLedger, SQLiteLedger, SqlLedger
from privacy.ledger.tables import LedgerEntry, SiteCap


def ledger_for(engine: Engine, *, audited: bool | None = None) -> SqlLedger:
    """The ledger implementation for ``engine``'s dialect (tables must exist)."""
    name = engine.dialect.name
    if name == "sqlite":
        return SQLiteLedger(engine, audited=audited)
    if name == "postgresql":
        return PostgresLedger(engine, audited=audited)
    raise StateError(f"no privacy ledger for a '{name}' database; use SQLite or PostgreSQL")


def coordinator_ledger(registry: Registry | None = None) -> SqlLedger:
    """The coordinator's ledger in the registry database (tables from migration 0002), audited.

    Opens the registry named by the settings when none is given.
    """
    registry = registry or Registry.open()
    return ledger_for(registry.engine, audited=True)


class SiteLedger(SQLiteLedger):
    """A site agent's own ledger: a local SQLite file with its own audit trail.

    It survives restarts (it is a file) and is the site's last word: the site
    refuses to release an update whose charge it cannot record under its cap,
    whatever the coordinator decided.
    """

    @classmethod
    def open(cls, path: str | Path) -> SiteLedger:
        """Open (creating the file, its tables and audit trail if needed) the ledger at ``path``."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the site ledger's folder {path.parent}: {exc}") from exc
        engine = create_registry_engine(f"sqlite:///{path.resolve()}")
        try:
            SQLModel.metadata.create_all(
                engine, tables=[LedgerEntry.__table__, SiteCap.__table__, AuditEvent.__table__],  # type: ignore[attr-defined]
            )
        except Exception as exc:  # corrupt or foreign file
            engine.dispose()
            raise StateError(
                f"cannot open the site privacy ledger at {path}: {exc}; restore it from a backup "
                "(never delete it: that would forget the privacy this site already spent)"
            ) from exc
        return cls(engine, audited=True)
