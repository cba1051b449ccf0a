"""Subject exceptions (the right to object, issue 14 point 5), on SQLite and PostgreSQL (127.0.0.1:5432).

The registry must never hold an identifier in the clear, nor a plain hash of
one: every row of every table is searched for both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, SQLModel, col, select

from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.governance.objections import (
    SUBJECT_KEY_NAME,
    ObjectionStore,
    key_fingerprint,
    load_subject_key,
    subject_digest,
)
from lifecycle.home import Home
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent, RegisteredModel
from lifecycle.settings import Settings

SUBJECTS = ["MRN-000123", "MRN-000456", "patient 789 (ward B)"]


def open_store(settings: Settings) -> ObjectionStore:
    """A registry with two registered models (no versions: the store needs only the model), and its store."""
    registry = Registry.open(settings)
    with registry.transaction() as session:
        session.add_all([RegisteredModel(name="demo"), RegisteredModel(name="other")])
    return ObjectionStore(registry)


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[ObjectionStore]:
    """On each backend."""
    opened = open_store(backend_settings)
    yield opened
    opened.registry.engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> ObjectionStore:
    """For checks made before the database is asked anything."""
    return open_store(Settings(home=tmp_path / "home"))


def audit_of(store: ObjectionStore) -> list[AuditEvent]:
    with Session(store.registry.engine) as session:
        return [e for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
                if e.action.startswith("objection.")]


def every_row(store: ObjectionStore) -> str:
    """Every row of every registry table, as text: what someone holding a copy of the database sees."""
    with Session(store.registry.engine) as session:
        dumped = [repr(session.execute(text(f'SELECT * FROM "{table}"')).all())
                  for table in SQLModel.metadata.tables]
    return "\n".join(dumped)


def test_identifiers_are_stored_as_hmac_digests_never_in_the_clear(store: ObjectionStore) -> None:
    assert store.add("demo", "default", SUBJECTS, reason="letter 2026-12-01", actor="cli:dpo") == 3
    key_path = store.registry.home.keys / SUBJECT_KEY_NAME
    key = key_path.read_bytes()
    assert len(key) == 32 and key_path.stat().st_mode & 0o777 == 0o600
    expected = {hmac.new(key, s.encode(), hashlib.sha256).hexdigest() for s in SUBJECTS}
    assert store.digests("demo", "default") == expected
    rows = every_row(store)
    for subject in SUBJECTS:
        assert subject not in rows
        assert hashlib.sha256(subject.encode()).hexdigest() not in rows  # no plain, guessable hash either
    assert all(digest in rows for digest in expected)


def test_add_counts_new_subjects_and_audits_counts_only(store: ObjectionStore) -> None:
    assert store.add("demo", "default", SUBJECTS[:2], reason="letters", actor="cli:dpo") == 2
    assert store.add("demo", "default", SUBJECTS, reason="more letters", actor="cli:dpo") == 1
    assert store.add("demo", "default", SUBJECTS, reason="again", actor="cli:dpo") == 0  # nothing new: no event
    assert store.count("demo", "default") == 3 and store.count("other", "default") == 0
    events = audit_of(store)
    key = key_fingerprint(store.key())  # names the key, reveals nothing of it
    assert [(e.action, e.subject, json.loads(e.details_json)) for e in events] == [
        ("objection.added", "demo", {"environment": "default", "count": 2, "reason": "letters", "key": key}),
        ("objection.added", "demo", {"environment": "default", "count": 1, "reason": "more letters", "key": key}),
    ]
    digests = store.digests("demo", "default")
    for event in events:
        assert not any(s in event.details_json for s in SUBJECTS)
        assert not any(d in event.details_json for d in digests)
    assert store.registry.verify_audit_chain() >= 2


def test_remove_lifts_objections_per_environment(store: ObjectionStore) -> None:
    store.add("demo", "default", SUBJECTS, reason="letters", actor="cli:dpo")
    store.add("demo", "clinic-north", SUBJECTS[:1], reason="letter", actor="cli:dpo")
    assert store.remove("demo", "default", [SUBJECTS[0], "MRN-never-listed"], reason="consent given",
                        actor="cli:dpo") == 1
    assert store.count("demo", "default") == 2 and store.count("demo", "clinic-north") == 1
    assert store.remove("demo", "default", ["MRN-never-listed"], reason="typo", actor="cli:dpo") == 0
    removed = [json.loads(e.details_json) for e in audit_of(store) if e.action == "objection.removed"]
    assert removed == [{"environment": "default", "count": 1, "reason": "consent given",
                        "key": key_fingerprint(store.key())}]


def test_the_revision_changes_on_every_change(store: ObjectionStore) -> None:
    empty = store.revision("demo", "default")
    assert (empty.count, empty.last_id, empty.last_at) == (0, 0, None)
    store.add("demo", "default", SUBJECTS[:2], reason="letters", actor="cli:dpo")
    first = store.revision("demo", "default")
    assert first.count == 2
    assert store.revisions("default") == {"demo": first}
    assert store.revisions("clinic-north") == {}
    # Remove the newest row and add another: same count; SQLite may even reuse the id.
    newest = max(store.digests("demo", "default"))
    with store.registry.transaction() as session:
        session.execute(text("DELETE FROM subject_exception WHERE subject_digest = :d"), {"d": newest})
    store.add("demo", "default", SUBJECTS[2:], reason="letter", actor="cli:dpo")
    second = store.revision("demo", "default")
    assert second.count == 2 and second != first


def test_list_summary_shows_counts_and_reasons_never_identifiers(store: ObjectionStore) -> None:
    store.add("demo", "default", SUBJECTS[:2], reason="letters", actor="cli:dpo")
    store.add("demo", "default", SUBJECTS[2:], reason="phone call, ref 17", actor="cli:nurse")
    summary = store.summary("demo", "default").to_dict()
    assert summary["count"] == 3
    assert [(b["actor"], b["reason"], b["count"]) for b in summary["batches"]] == [
        ("cli:dpo", "letters", 2), ("cli:nurse", "phone call, ref 17", 1)]
    dumped = json.dumps(summary)
    assert not any(s in dumped for s in SUBJECTS)


@pytest.mark.parametrize(("subjects", "reason", "match"), [
    (["MRN-1", "bad\nid"], "letters", "subject identifier 2 of 2 is not 1-128 printable ASCII"),
    (["x" * 129], "letters", "subject identifier 1 of 1 is not"),
    ([""], "letters", "subject identifier 1 of 1 is not"),
    (["MRN-é"], "letters", "subject identifier 1 of 1 is not"),
    ([], "letters", "no subject identifier given"),
    (["MRN-000123"], "  ", "give a reason"),
    (["MRN-000123"], "letter from MRN-000123", "the reason contains a subject identifier"),
])
def test_bad_input_is_refused_whole_and_never_echoed(sqlite_store: ObjectionStore, subjects: list[str],
                                                     reason: str, match: str) -> None:
    store = sqlite_store
    with pytest.raises(ConfigurationError, match=match) as raised:
        store.add("demo", "default", subjects, reason=reason, actor="cli:dpo")
    assert not any(s and s in str(raised.value) for s in subjects if len(s) > 3)
    assert store.count("demo", "default") == 0 and audit_of(store) == []


def test_unknown_model_and_bad_environment(store: ObjectionStore) -> None:
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        store.add("nope", "default", SUBJECTS, reason="letters", actor="cli:dpo")
    with pytest.raises(NotFoundError):
        store.count("Bad\x00Name", "default")
    with pytest.raises(ConfigurationError, match="invalid environment name"):
        store.add("demo", "Clinic North", SUBJECTS, reason="letters", actor="cli:dpo")


def test_a_machine_with_another_or_no_subject_key_is_refused(store: ObjectionStore, tmp_path: Path) -> None:
    store.add("demo", "default", SUBJECTS[:1], reason="letter", actor="cli:dpo")
    elsewhere = Registry(store.registry.engine, Home(tmp_path / "elsewhere").ensure())  # same database, own keys
    with pytest.raises(StateError, match="no subject key at .* copy FEDGUARD_HOME/keys/subject-key"):
        ObjectionStore(elsewhere).add("demo", "default", SUBJECTS[1:], reason="letter", actor="cli:dpo")
    assert not (elsewhere.home.keys / SUBJECT_KEY_NAME).exists()  # no stray key that would match nothing
    (elsewhere.home.keys / SUBJECT_KEY_NAME).write_bytes(os.urandom(32))
    with pytest.raises(StateError, match="is not the one the registry's objections were recorded with"):
        ObjectionStore(elsewhere).remove("demo", "default", SUBJECTS[:1], reason="lifted", actor="cli:dpo")
    (elsewhere.home.keys / SUBJECT_KEY_NAME).write_bytes((store.registry.home.keys / SUBJECT_KEY_NAME).read_bytes())
    assert ObjectionStore(elsewhere).add("demo", "default", SUBJECTS, reason="letters", actor="cli:dpo") == 2
    assert store.count("demo", "default") == 3


def test_the_subject_key_is_created_once_even_by_racing_replicas(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    with ThreadPoolExecutor(max_workers=8) as pool:
        created = set(pool.map(lambda _: load_subject_key(keys), range(16)))
    assert len(created) == 1
    assert [p.name for p in keys.iterdir()] == [SUBJECT_KEY_NAME]  # no temporary file left behind
    assert subject_digest(created.pop(), "MRN-1") != hashlib.sha256(b"MRN-1").hexdigest()
    (keys / SUBJECT_KEY_NAME).write_bytes(os.urandom(16))
    with pytest.raises(StateError, match="is 16 bytes, not 32"):
        load_subject_key(keys)
