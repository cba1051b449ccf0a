"""Opening the registry database: engine, schema migrations, and honest errors.

A registry must never be half-written or mistaken for another application's
database. Opening therefore (1) refuses a database that has tables but no
fedguard schema stamp (a foreign file), (2) turns "file is not a database" and
connection failures into :class:`StateError` with what to do, and (3) brings
the schema up to date with Alembic inside one transaction.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from lifecycle.errors import StateError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FEDGUARD_TABLES = frozenset(
    {"registered_model", "training_run", "site_participation", "model_version", "audit_event", "api_key"}
)


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


def migrate(engine: Engine) -> None:
    """Check the database is ours (or empty) and upgrade it to the newest schema.

    Raises
    ------
    StateError
        The database is unreadable, corrupt, or belongs to something else.
    """
    where = _describe(str(engine.url))
    try:
        with engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            if tables and "alembic_version" not in tables:
                raise StateError(
                    f"the database at {where} is not a fedguard registry "
                    f"(it has tables {sorted(tables)[:5]}); point FEDGUARD_HOME or "
                    "FEDGUARD_DATABASE_URL at a fedguard registry or an empty database"
                )
            if "alembic_version" in tables and not FEDGUARD_TABLES <= tables:
                raise StateError(
                    f"the database at {where} is managed by another application's "
                    "migrations; point FEDGUARD_DATABASE_URL at a database of its own"
                )
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except StateError:
        raise
    except DBAPIError as exc:
        raise StateError(
            f"cannot open the registry at {where}: {exc.orig}; if it is a corrupt file, "
            "move it aside and let fedguard create a new one, or restore a backup"
        ) from exc
    except SQLAlchemyError as exc:
        raise StateError(f"cannot open the registry at {where}: {exc}") from exc
