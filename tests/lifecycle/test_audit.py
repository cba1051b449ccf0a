"""The audit chain detects edits, deletions and reordering."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from lifecycle import audit
from lifecycle.audit import AuditChainError
from lifecycle.registry import Registry, VersionRecord


def test_every_registry_write_is_audited(published: VersionRecord, registry: Registry) -> None:
    assert registry.verify_audit_chain() == 5  # run.finished, model.created, version registered, 2 gate decisions
    with Session(registry.engine) as session:
        actions = [row[0] for row in session.execute(text("SELECT action FROM audit_event ORDER BY id"))]
    assert actions == ["run.finished", "model.created", "model.version.registered", "gates.evaluated",
                       "gates.evaluated"]


def test_edited_event_is_detected(published: VersionRecord, registry: Registry) -> None:
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET actor='mallory' WHERE id=2"))
    with pytest.raises(AuditChainError, match="event 2 .* altered"):
        registry.verify_audit_chain()


def test_deleted_event_is_detected(published: VersionRecord, registry: Registry) -> None:
    with registry.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE id=2"))
    with pytest.raises(AuditChainError, match="removed or reordered"):
        registry.verify_audit_chain()


def test_chain_links_each_event_to_the_last(registry: Registry) -> None:
    with registry.transaction() as session:
        first = audit.record(session, "test.one", actor="t")
        second = audit.record(session, "test.two", actor="t", details={"n": 1})
    assert first.prev_hash == audit.GENESIS
    assert second.prev_hash == first.hash
    assert registry.verify_audit_chain() == 2


def test_failed_transaction_writes_no_event(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.transaction() as session:
        audit.record(session, "test.doomed", actor="t")
        raise RuntimeError("crash between steps")
    assert registry.verify_audit_chain() == 0
