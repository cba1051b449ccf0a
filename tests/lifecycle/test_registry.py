"""Registry behaviour: versions, lineage, lookups, and refusing bad state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord, parse_ref
from lifecycle.settings import Settings
from tests.conftest import make_publication


def test_lineage_is_recorded(published: VersionRecord) -> None:
    assert [s.site for s in published.sites] == ["site-0", "site-1"]
    assert all(s.epsilon == 1.5 and s.delta == 1e-5 for s in published.sites)
    assert published.run_id


def test_identical_content_shares_one_artifact(registry: Registry) -> None:
    a = publish_model(registry, make_publication(name="a"))
    b = publish_model(registry, make_publication(name="a"))
    assert a.artifact.digest != "" and a.version == 1 and b.version == 2


@pytest.mark.parametrize("ref", ["demo:0", "demo:x", "demo:-1"])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_ref(ref)


def test_unknown_model_and_version(published: VersionRecord, registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="registered: demo"):
        registry.resolve("nope")
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.resolve("demo:9")


def test_invalid_model_name_is_refused(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="invalid model name"):
        publish_model(registry, make_publication(name="Bad Name!"))


def test_corrupt_registry_file_is_refused_and_kept(fedguard_home: Path) -> None:
    fedguard_home.mkdir(parents=True)
    db = fedguard_home / "registry.db"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    with pytest.raises(StateError, match="cannot open the registry"):
        Registry.open(Settings(home=fedguard_home))
    assert db.read_bytes() == before


def test_foreign_database_is_refused_and_kept(fedguard_home: Path) -> None:
    import sqlite3

    fedguard_home.mkdir(parents=True)
    db = fedguard_home / "registry.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    with pytest.raises(StateError, match="not a fedguard registry"):
        Registry.open(Settings(home=fedguard_home))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_home_as_user(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StateError, match="not writable"):
        Registry.open(Settings(home=locked / "home"))


def test_home_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="not writable"):
        Registry.open(Settings(home=blocker))


def _open_after(barrier: Any, home: Path, results: Any) -> None:
    barrier.wait()
    try:
        registry = Registry.open(Settings(home=home))
        results.put(registry.verify_audit_chain())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put(repr(exc))


def test_concurrent_first_opens_share_one_whole_registry(fedguard_home: Path) -> None:
    """A new registry file appears whole, so a racing process never sees (and refuses) an empty one.

    Processes, not threads: Alembic's migration context is process-global.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_after, args=(barrier, fedguard_home, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert outcomes == [0] * 4
    assert sorted(p.name for p in fedguard_home.iterdir() if "registry" in p.name) == ["registry.db"]


def test_empty_registry_file_is_refused_and_kept(fedguard_home: Path) -> None:
    fedguard_home.mkdir(parents=True)
    (fedguard_home / "registry.db").touch()
    with pytest.raises(StateError, match=r"empty \(0 bytes\)"):
        Registry.open(Settings(home=fedguard_home))
    assert (fedguard_home / "registry.db").stat().st_size == 0


def test_head_constants_are_alembics_head() -> None:
    """The fast open path's idea of the newest schema is Alembic's (a new migration updates both constants)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from lifecycle.registry.database import HEAD_REVISION, HEAD_TABLES, MIGRATIONS, schema_tables

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]
    assert schema_tables(HEAD_REVISION) == HEAD_TABLES


def test_a_registry_at_head_opens_without_alembic(registry: Registry, fedguard_home: Path) -> None:
    import subprocess
    import sys

    probe = "import sys; from lifecycle.registry import Registry; Registry.open(); print('alembic' in sys.modules)"
    env = {**os.environ, "FEDGUARD_HOME": str(fedguard_home)}
    env.pop("FEDGUARD_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
