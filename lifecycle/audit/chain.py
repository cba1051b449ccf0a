"""The tamper-evident audit trail: a hash chain in the registry database.

Each event stores the SHA-256 of its predecessor and its own hash over a
canonical JSON of its content (a linked timestamping chain, Haber & Stornetta
1991). Editing, deleting or reordering any past event breaks every later hash,
which :func:`verify_chain` detects. Events are written in the *same
transaction* as the state change they describe, so a crash leaves both or
neither.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from lifecycle.errors import VerificationError
from lifecycle.registry.tables import AuditEvent, utcnow

AUDIT = AuditEvent.__table__  # type: ignore[attr-defined]  # SQLModel's table, for Core statements
_LAST_HASH = sa_select(AUDIT.c.hash).order_by(AUDIT.c.id.desc()).limit(1)
_INSERT_EVENT = insert(AUDIT)
GENESIS = "0" * 64
AUDIT_LOCK_KEY = 0x66656467  # "fedg": one advisory lock serialises audit appenders
APPENDED = "fedguard.audit.appended"
"""Key :func:`record` sets in ``session.info``: the registry signs a checkpoint after such a commit, if due."""


class AuditChainError(VerificationError):
    """The audit chain does not verify: an event was altered, removed or reordered."""


def _event_hash(prev_hash: str, event: AuditEvent) -> str:
    body = json.dumps(
        {
            "prev": prev_hash,
            "at": event.created_at.isoformat(),
            "actor": event.actor,
            "action": event.action,
            "subject": event.subject,
            "details": json.loads(event.details_json),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def serialise(session: Session) -> None:
    """Take the audit trail's transaction-scoped lock: until this transaction ends, no other writer audits.

    On PostgreSQL, ``pg_advisory_xact_lock(AUDIT_LOCK_KEY)`` (released at
    commit or rollback); SQLite serialises writers already. :func:`record`
    takes it before reading the chain's head; a governance check that must
    not be separated from its write (a taint re-check, which version is in
    production) takes it first, so every audited change that could
    invalidate the check waits until the write commits.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    subject: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to the chain inside the caller's transaction.

    On PostgreSQL a transaction-scoped advisory lock serialises appenders so
    two writers cannot fork the chain; SQLite serialises writers already.
    """
    serialise(session)
    # SQLAlchemy Core, not the ORM's unit of work: the ORM caches its compiled INSERT per mapper across all
    # engines (100 entries), so a process writing many site ledgers (a simulation: one SQLite file per
    # site) recompiled it for every event. Core statements hit each engine's own cache.
    connection = session.connection()
    session.flush()  # an event follows every change the caller made before it in this transaction
    prev_hash = connection.execute(_LAST_HASH).scalar()
    event = AuditEvent(
        created_at=utcnow(),
        actor=actor,
        action=action,
        subject=subject,
        details_json=json.dumps(dict(details or {}), sort_keys=True, default=str),
        prev_hash=prev_hash or GENESIS,
        hash="",
    )
    event.hash = _event_hash(event.prev_hash, event)
    inserted = connection.execute(_INSERT_EVENT, dict(
        created_at=event.created_at, actor=event.actor, action=event.action, subject=event.subject,
        details_json=event.details_json, prev_hash=event.prev_hash, hash=event.hash,
    ))
    event.id = inserted.inserted_primary_key[0] if inserted.inserted_primary_key else None
    session.info[APPENDED] = True
    return event


def verify_chain(session: Session) -> int:
    """Recompute the whole chain; return the number of events.

    Raises
    ------
    AuditChainError
        Naming the first event whose link or hash does not verify.
    """
    prev_hash = GENESIS
    count = 0
    for event in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))):
        if event.prev_hash != prev_hash:
            raise AuditChainError(
                f"audit event {event.id} ({event.action}) does not follow its predecessor: "
                "an event was removed or reordered; restore the registry from a backup"
            )
        if _event_hash(prev_hash, event) != event.hash:
            raise AuditChainError(
                f"audit event {event.id} ({event.action}) was altered after it was written; "
                "restore the registry from a backup"
            )
        prev_hash = event.hash
        count += 1
    return count
