"""Opening the registry database: engine, schema migrations, and honest errors.

A registry must never be half-written or mistaken for another application's
database. Opening therefore (1) refuses a database that has tables but no
fedguard schema stamp (a foreign file), a stamp this fedguard does not know,
a table missing from the stamped schema (damage), and an empty registry file
(a lost registry, never silently rebuilt), (2) turns "file is not a database"
and connection failures into :class:`StateError` with what to do, and (3)
brings the schema up to date with Alembic inside one transaction. A new SQLite
registry is created whole, under a private name, and linked into place.

A registry already at :data:`HEAD_REVISION` with every table of
:data:`HEAD_TABLES` is opened without Alembic (neither imported nor run): that
is what every command that only reads or writes rows meets, and Alembic's
import and its migration checks were most of ``fedguard site list``'s time.
Anything else takes the full path above.
"""

from __future__ import annotations

import os
import uuid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from lifecycle.errors import StateError

if TYPE_CHECKING:  # Alembic is imported only where a schema is created, checked in full or migrated
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FEDGUARD_TABLES = frozenset(
    {"registered_model", "training_run", "site_participation", "model_version", "audit_event", "api_key"}
)
HEAD_REVISION = "0006"
"""The newest migration in ``lifecycle/migrations/versions`` (a new migration updates it and
:data:`HEAD_TABLES`; ``tests/lifecycle/test_registry.py`` checks both against Alembic)."""
HEAD_TABLES = frozenset({
    "api_key", "approval", "audit_event", "consent_withdrawal", "deployment", "deployment_event",
    "federation_site", "gate_decision", "governance_policy", "model_taint", "model_version",
    "privacy_ledger_entry", "privacy_site_cap", "registered_model", "site_credential", "site_participation",
    "stage_event", "subject_exception", "training_run", "version_stage",
})
"""The tables of fedguard's schema at :data:`HEAD_REVISION` (``schema_tables(HEAD_REVISION)``)."""


def _describe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def create_registry_engine(url: str) -> Engine:
    """Create an engine; SQLite gets foreign keys on and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_file(engine: Engine) -> Path | None:
    """The SQLite file behind ``engine``, or ``None`` (another database, or in memory)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return Path(str(engine.url.database))


def _create_sqlite_registry(path: Path) -> None:
    """Create a new registry file whole: migrate a private file, then link it into place.

    Never leaves ``path`` half-created, so that an empty or partial file at
    ``path`` always means damage (refused by :func:`migrate`), never "another
    fedguard process is creating it right now". If another process wins the
    race, its registry is used and this one is discarded.
    """
    from alembic import command

    staged = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.new")
    engine = create_registry_engine(f"sqlite:///{staged}")
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
        engine.dispose()
        try:
            os.link(staged, path)
        except FileExistsError:
            pass
    finally:
        engine.dispose()
        staged.unlink(missing_ok=True)


def _alembic_config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


@cache
def schema_tables(revision: str) -> frozenset[str]:
    """The tables fedguard's schema has at ``revision`` (migrating an in-memory database to it)."""
    from alembic import command

    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
            return frozenset(inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _check_ours(conn: Connection, where: str) -> None:
    """Refuse a database that is foreign, newer than this fedguard, or missing tables of its revision."""
    from alembic.script import ScriptDirectory

    tables = set(inspect(conn).get_table_names())
    if not tables:
        return
    if "alembic_version" not in tables:
        raise StateError(
            f"the database at {where} is not a fedguard registry "
            f"(it has tables {sorted(tables)[:5]}); point FEDGUARD_HOME or "
            "FEDGUARD_DATABASE_URL at a fedguard registry or an empty database"
        )
    revisions = [str(r) for r in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()]
    known = {rev.revision for rev in ScriptDirectory.from_config(_alembic_config(conn)).walk_revisions()}
    unknown = [r for r in revisions if r not in known]
    if unknown and not FEDGUARD_TABLES & tables:
        raise StateError(
            f"the database at {where} is managed by another application's migrations "
            f"(schema revision {unknown[0]!r}, no fedguard table); point FEDGUARD_DATABASE_URL at a database of its own"
        )
    if unknown:
        raise StateError(
            f"the registry at {where} is at schema revision {unknown[0]!r}, which this fedguard does not know "
            "(a newer fedguard wrote it, or the database is damaged); run the fedguard that wrote it, "
            "or restore the registry from a backup"
        )
    if not revisions:
        raise StateError(
            f"the registry at {where} has tables but no schema revision (its alembic_version table is empty): "
            "the database is damaged; restore it from a backup"
        )
    missing = sorted(schema_tables(revisions[0]) - tables)
    if missing:
        raise StateError(
            f"the registry at {where} is damaged: table(s) {', '.join(missing)} of fedguard's schema "
            f"(revision {revisions[0]}) are missing; restore the registry from a backup"
        )


def _at_head(conn: Connection) -> bool:
    """True if the database is stamped :data:`HEAD_REVISION` alone and has every table of :data:`HEAD_TABLES`.

    Then :func:`_check_ours` would pass and the upgrade would do nothing, so
    neither is run.
    """
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables or not HEAD_TABLES <= tables:
        return False
    revisions = [str(r) for r in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()]
    return revisions == [HEAD_REVISION]


def _migrate(engine: Engine, path: Path | None, where: str) -> None:
    """The full path of :func:`migrate`: create, check and upgrade with Alembic."""
    from alembic import command
    from alembic.util import CommandError

    try:
        if path is not None and not path.exists():
            _create_sqlite_registry(path)
        elif path is not None and path.stat().st_size == 0:
            raise StateError(
                f"the registry file {path} is empty (0 bytes), which fedguard never leaves: the registry is "
                "damaged, and a new empty one would orphan every model in the artifact store; restore "
                "registry.db from a backup (or, to start over, move the empty file aside)"
            )
        with engine.begin() as conn:
            _check_ours(conn, where)
            command.upgrade(_alembic_config(conn), "head")
    except CommandError as exc:
        raise StateError(f"cannot migrate the registry at {where}: {exc}; restore it from a backup") from exc


def migrate(engine: Engine) -> None:
    """Check the database is ours (or empty) and upgrade it to the newest schema.

    A missing SQLite file is created whole (:func:`_create_sqlite_registry`);
    an existing file of 0 bytes is refused like any other damaged one, since
    rebuilding it would orphan every artifact the lost registry described.

    Raises
    ------
    StateError
        The database is unreadable, corrupt, damaged, at an unknown schema
        revision, or belongs to something else.
    """
    where = _describe(str(engine.url))
    path = _sqlite_file(engine)
    try:
        if path is None or (path.exists() and path.stat().st_size > 0):
            with engine.connect() as conn:
                if _at_head(conn):
                    return
        _migrate(engine, path, where)
    except StateError:
        raise
    except OSError as exc:
        raise StateError(f"cannot create the registry at {where}: {exc}") from exc
    except DBAPIError as exc:
        raise StateError(
            f"cannot open the registry at {where}: {exc.orig}; if it is a corrupt file, "
            "move it aside and let fedguard create a new one, or restore a backup"
        ) from exc
    except SQLAlchemyError as exc:
        raise StateError(f"cannot open the registry at {where}: {exc}") from exc
