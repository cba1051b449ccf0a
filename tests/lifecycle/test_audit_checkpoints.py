"""Signed checkpoints catch what the hash chain alone cannot: a history rewritten and rehashed (issue 14, point 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.audit import AuditChainError
from lifecycle.audit.chain import _event_hash
from lifecycle.audit.checkpoints import fingerprint, load_public_key
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    """A registry that signs a checkpoint every 2 events, holding 5 events (so 2 checkpoints: at 2 and 4)."""
    opened = Registry.open(backend_settings.model_copy(update={"audit_checkpoint_every": 2}))
    for n in range(5):
        with opened.transaction() as session:
            audit.record(session, "test.event", actor="cli:tester", subject=f"s{n}", details={"n": n})
    yield opened
    opened.engine.dispose()


def _rewrite(registry: Registry, event_id: int, **fields: str) -> None:
    """Edit event ``event_id`` in place, then hide the edit by rehashing the whole chain."""
    with Session(registry.engine) as session:
        event = session.get(AuditEvent, event_id)
        assert event is not None
        for name, value in fields.items():
            setattr(event, name, value)
        session.add(event)
        _rehash_from(session)


def _rehash_from(session: Session) -> None:
    """What an administrator with database access does to hide an edit: recompute every link and hash."""
    prev = audit.GENESIS
    for event in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all():
        event.prev_hash = prev
        event.hash = _event_hash(prev, event)
        session.add(event)
        prev = event.hash
    session.commit()


def test_a_checkpoint_is_signed_every_n_events_and_the_trail_verifies(registry: Registry) -> None:
    entries = registry.checkpoint_log.read()
    assert [(e.checkpoint.events, e.checkpoint.event_id) for e in entries] == [(2, 2), (4, 4)]
    assert (registry.home.keys / "audit-key.pem").stat().st_mode & 0o777 == 0o600  # not the model-signing key
    public = load_public_key(registry.home.keys / "audit-key.pub.pem")
    assert {e.checkpoint.key for e in entries} == {fingerprint(public)}
    verified = registry.verify_audit()
    assert (verified.events, verified.checkpoints) == (5, 2)
    assert registry.checkpoint(every=1) is not None and registry.checkpoint(every=1) is None  # nothing new


def test_an_edited_row_rehashed_is_caught_by_the_checkpoint_not_the_chain(registry: Registry) -> None:
    _rewrite(registry, 2, actor="cli:mallory")
    assert registry.verify_audit_chain() == 5  # the chain alone is fooled
    with pytest.raises(AuditChainError, match=r"checkpoint 1 \(event 2.*rewritten and rehashed"):
        registry.verify_audit()


def test_a_deleted_row_rehashed_is_caught(registry: Registry) -> None:
    with Session(registry.engine) as session:
        session.execute(text("DELETE FROM audit_event WHERE id = 1"))
        _rehash_from(session)
    assert registry.verify_audit_chain() == 4
    with pytest.raises(AuditChainError, match=r"checkpoint 1 .*rewritten and rehashed"):
        registry.verify_audit()


def test_events_deleted_after_a_checkpoint_are_caught(registry: Registry) -> None:
    with Session(registry.engine) as session:
        session.execute(text("DELETE FROM audit_event WHERE id >= 4"))
        session.commit()
    assert registry.verify_audit_chain() == 3  # a truncated chain still links
    with pytest.raises(AuditChainError, match="no longer holds event 4"):
        registry.verify_audit()


def test_an_edited_row_is_named_by_the_chain(registry: Registry) -> None:
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET subject = 'x' WHERE id = 3"))
    with pytest.raises(AuditChainError, match="event 3 .* altered"):
        registry.verify_audit()


def test_a_forged_checkpoint_or_another_key_does_not_verify(registry: Registry, tmp_path: Path) -> None:
    path = registry.checkpoint_log.path
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["checkpoint"]["events"] = 3
    path.write_text("\n".join([lines[0], json.dumps(forged)]) + "\n")
    with pytest.raises(AuditChainError, match=r"checkpoint 2 .* not signed by the audit key"):
        registry.verify_audit()
    path.write_text("\n".join(lines) + "\n")
    other = tmp_path / "other.pub.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(AuditChainError, match="not signed by the audit key"):
        registry.verify_audit(other)


def test_audit_verify_command_says_what_it_checked_and_exits_5_on_a_rewrite(tmp_path: Path) -> None:
    home = tmp_path / "home"
    opened = Registry.open(Settings(home=home, audit_checkpoint_every=3))
    for n in range(4):
        with opened.transaction() as session:
            audit.record(session, "test.event", actor="cli:tester", subject=f"s{n}")
    env = {"FEDGUARD_HOME": str(home), "PATH": "/usr/bin:/bin"}

    def fedguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedguard.cli", "audit", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    ok = fedguard("verify")
    assert ok.returncode == 0 and "4 events, hash chain intact; 1 signed checkpoint(s), the last at event 3" in \
        " ".join(ok.stdout.split()), ok.stdout + ok.stderr
    signed = fedguard("checkpoint", "--json")
    assert signed.returncode == 0 and json.loads(signed.stdout)["events"] == 4, signed.stderr
    _rewrite(opened, 1, subject="rewritten")
    bad = fedguard("verify")
    assert bad.returncode == 5, bad.stdout + bad.stderr
    assert bad.stderr.startswith("error: checkpoint 1 (event 3") and "rehashed" in bad.stderr, bad.stderr
    opened.engine.dispose()


def test_a_damaged_checkpoint_file_never_fails_a_registry_write(registry: Registry) -> None:
    registry.checkpoint_log.path.write_text("not json\n")
    with registry.transaction() as session:  # committed; the checkpoint is only warned about
        audit.record(session, "test.after", actor="cli:tester")
    assert registry.verify_audit_chain() == 6
    with pytest.raises(AuditChainError, match="line 1 is not a checkpoint"):
        registry.verify_audit()
