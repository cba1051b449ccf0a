"""Sites as witnesses of the audit chain (issue 14, point 6): what a site keeps, and what an auditor checks with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session
from typer.testing import CliRunner

from lifecycle import audit
from lifecycle.audit import AuditChainError
from lifecycle.audit.checkpoints import PUBLIC_KEY_NAME, AuditKey, Checkpoint, Signed, load_public_key
from lifecycle.audit.witness import ALARMS, WITNESSED, WitnessLog, encode_public_key, verify_witness, witness_path
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings
from tests.lifecycle.test_audit_checkpoints import _rehash_from, _rewrite

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    """A registry signing a checkpoint every 2 events, holding 5 events (checkpoints at 2 and 4)."""
    opened = Registry.open(backend_settings.model_copy(update={"audit_checkpoint_every": 2}))
    _events(opened, 5)
    yield opened
    opened.engine.dispose()


def _events(registry: Registry, count: int) -> None:
    for n in range(count):
        with registry.transaction() as session:
            audit.record(session, "test.event", actor="cli:tester", subject=f"s{n}", details={"n": n})


def _key(registry: Registry) -> str:
    return encode_public_key(load_public_key(registry.home.keys / PUBLIC_KEY_NAME))


def _site_witnesses(registry: Registry, path: Path) -> WitnessLog:
    """A site that received each of the coordinator's checkpoints so far (as the train messages carry them)."""
    site = WitnessLog(path, now=lambda: NOW)
    for signed in registry.checkpoint_log.read():
        assert site.observe(signed.line(), _key(registry)).status == WITNESSED
    return site


def _signed(key: AuditKey, events: int, event_id: int, head: str) -> Signed:
    statement = Checkpoint(event_id=event_id, hash=head, events=events, at=NOW.isoformat(), key=key.fingerprint)
    return Signed(statement, key.sign(statement))


def test_a_site_keeps_each_new_checkpoint_once_and_raises_alarms_for_a_rewound_history(tmp_path: Path) -> None:
    key = AuditKey(Ed25519PrivateKey.generate())
    public = encode_public_key(key.private.public_key())
    site = WitnessLog(tmp_path / "audit.witness.jsonl", now=lambda: NOW)
    first, second = _signed(key, 2, 2, "a" * 64), _signed(key, 4, 4, "b" * 64)
    assert site.observe(first.line(), public).new
    assert site.observe(first.line(), public).status == "known"  # every round carries it again: kept once
    assert site.observe(second.line(), public).status == WITNESSED
    resigned = _signed(key, 4, 4, "b" * 64)  # the same head signed again later: nothing new
    assert (site.observe(resigned.line(), public).status, len(site.read())) == ("known", 2)
    backwards = site.observe(_signed(key, 3, 3, "c" * 64).line(), public)
    fork = site.observe(_signed(key, 4, 4, "d" * 64).line(), public)
    assert (backwards.status, backwards.alarm, fork.status, fork.alarm) == ("backwards", True, "fork", True)
    assert not site.observe(_signed(key, 4, 4, "d" * 64).line(), public).new  # each alarm is recorded once
    assert [e.status for e in site.read()] == [WITNESSED, WITNESSED, "backwards", "fork"]
    assert all(e.received_at == NOW.isoformat() for e in site.read())
    assert site.path.stat().st_mode & 0o777 == 0o600


def test_a_site_never_silently_accepts_a_checkpoint_it_cannot_trust(tmp_path: Path) -> None:
    key, other = AuditKey(Ed25519PrivateKey.generate()), AuditKey(Ed25519PrivateKey.generate())
    public, other_public = (encode_public_key(k.private.public_key()) for k in (key, other))
    site = WitnessLog(tmp_path / "w.jsonl")
    assert site.observe(_signed(key, 2, 2, "a" * 64).line(), public).status == WITNESSED  # trust on first use
    impostor = site.observe(_signed(other, 6, 6, "e" * 64).line(), other_public)
    assert (impostor.status, impostor.warning, impostor.alarm) == ("unknown-key", True, False)
    forged = replace(_signed(key, 8, 8, "f" * 64), signature=_signed(other, 8, 8, "f" * 64).signature)
    assert site.observe(forged.line(), public).status == "bad-signature"
    assert site.observe("not json", public).status == "malformed"
    assert site.observe(_signed(key, 2, 2, "a" * 64).line(), "not a key").status == "malformed"
    assert [e.status for e in site.read()] == [WITNESSED, "unknown-key", "bad-signature"]
    given = WitnessLog(tmp_path / "given.jsonl", trusted_key=other.fingerprint)  # the key the site was given wins
    assert given.observe(_signed(key, 2, 2, "a" * 64).line(), public).status == "unknown-key"
    assert given.observe(_signed(other, 2, 2, "a" * 64).line(), other_public).status == WITNESSED


def test_a_damaged_line_is_skipped_and_flagged_and_witnessing_goes_on(tmp_path: Path) -> None:
    key = AuditKey(Ed25519PrivateKey.generate())
    public = encode_public_key(key.private.public_key())
    site = WitnessLog(tmp_path / "audit.witness.jsonl", now=lambda: NOW)
    assert site.observe(_signed(key, 2, 2, "a" * 64).line(), public).new
    with site.path.open("a") as damaged:
        damaged.write('{"checkpoint": {"event_id": 3, "ha')  # a torn append: no newline
    seen = site.observe(_signed(key, 4, 4, "b" * 64).line(), public)
    assert (seen.status, seen.new, seen.damaged) == (WITNESSED, True, (2,))
    assert seen.summary()["damaged"] == [2]
    assert [e.signed.checkpoint.events for e in site.witnessed()] == [2, 4]  # appended on a fresh line
    assert site.scan()[1] == (2,) and site.observe(_signed(key, 4, 4, "b" * 64).line(), public).damaged == (2,)
    out = tmp_path / "export.jsonl"
    assert site.export(out) == (2, 1) and len(out.read_text().splitlines()) == 2
    with pytest.raises(AuditChainError):
        site.read()  # the strict reader (an auditor's check of an exported file) still names the damage


def test_verify_with_a_witness_passes_on_a_clean_registry(registry: Registry, tmp_path: Path) -> None:
    site = _site_witnesses(registry, tmp_path / "audit.witness.jsonl")
    _events(registry, 3)  # the chain grew since: it still extends what the site witnessed
    with Session(registry.engine) as session:
        found = verify_witness(session, site.path, load_public_key(registry.home.keys / PUBLIC_KEY_NAME))
    assert (found.checkpoints, found.alarms, found.skipped) == (2, 0, 0)
    assert found.last_checkpoint is not None and found.last_checkpoint["events"] == 4


def test_a_rewrite_that_also_resigns_the_coordinators_checkpoints_is_caught_by_a_witness(
    registry: Registry, tmp_path: Path
) -> None:
    site = _site_witnesses(registry, tmp_path / "audit.witness.jsonl")
    _rewrite(registry, 3, actor="cli:mallory")  # the attacker controls the coordinator: database, file and key
    registry.checkpoint_log.path.unlink()
    assert registry.checkpoint(every=1) is not None
    assert registry.verify_audit().events == 5  # the coordinator's own evidence now agrees with the rewrite
    public = load_public_key(registry.home.keys / PUBLIC_KEY_NAME)
    with Session(registry.engine) as session, pytest.raises(
            AuditChainError, match=r"checkpoint 2 \(event 4, 4 events.*rewritten and rehashed.*first event that "
                                   r"differs is an event after event 2 and at or before event 4"):
        verify_witness(session, site.path, public)


def test_deleted_events_and_a_replaced_audit_key_are_caught_by_a_witness(registry: Registry, tmp_path: Path) -> None:
    site = _site_witnesses(registry, tmp_path / "audit.witness.jsonl")
    public = load_public_key(registry.home.keys / PUBLIC_KEY_NAME)
    with Session(registry.engine) as session, pytest.raises(AuditChainError, match="not signed by the audit key"):
        verify_witness(session, site.path, Ed25519PrivateKey.generate().public_key())
    with Session(registry.engine) as session:
        for event in (4, 5):
            session.delete(session.get(AuditEvent, event))
        session.commit()
        _rehash_from(session)
    with Session(registry.engine) as session, pytest.raises(AuditChainError, match="no longer holds event 4"):
        verify_witness(session, site.path, public)


def test_the_cli_exports_a_sites_witness_and_verify_fails_with_exit_5_on_a_rewrite(
    fedguard_home: Path, tmp_path: Path
) -> None:
    from fedguard.cli import app as cli

    registry = Registry.open(Settings(home=fedguard_home, audit_checkpoint_every=2))
    _events(registry, 4)
    audit_log = tmp_path / "audit.jsonl"
    _site_witnesses(registry, witness_path(audit_log))
    runner = CliRunner()
    out = tmp_path / "st-marys.witness.jsonl"
    exported = runner.invoke(cli, ["client", "witness", "--log", str(audit_log), "--out", str(out),
                                   "--site", "st-marys", "--json"])
    assert exported.exit_code == 0 and json.loads(exported.stdout)["exported"] == 2, exported.output
    with witness_path(audit_log).open("a") as damaged:
        damaged.write("not a checkpoint\n")
    skipped = runner.invoke(cli, ["client", "witness", "--log", str(audit_log), "--out", str(out), "--site",
                                  "st-marys"])
    assert skipped.exit_code == 0 and "2 witnessed checkpoint(s) written" in skipped.output, skipped.output
    assert "1 damaged line(s) skipped" in skipped.output
    assert {json.loads(line)["witness"] for line in out.read_text().splitlines()} == {"st-marys"}
    ok = runner.invoke(cli, ["audit", "verify", "--witness", str(out), "--witness", str(out), "--json"])
    assert ok.exit_code == 0 and [w["checkpoints"] for w in json.loads(ok.stdout)["witnesses"]] == [2, 2], ok.output
    _rewrite(registry, 1, subject="rewritten")
    registry.checkpoint_log.path.unlink()
    registry.checkpoint(every=1)
    assert runner.invoke(cli, ["audit", "verify"]).exit_code == 0
    bad = runner.invoke(cli, ["audit", "verify", "--witness", str(out)])
    assert isinstance(bad.exception, AuditChainError) and bad.exception.exit_code == 5
    assert "checkpoint 1 (event 2" in str(bad.exception) and "first event that differs" in str(bad.exception)
    registry.engine.dispose()


def test_alarms_are_named_by_the_export_and_checked_by_verify(registry: Registry, tmp_path: Path) -> None:
    site = _site_witnesses(registry, tmp_path / "audit.witness.jsonl")
    key = AuditKey.ensure(registry.home.keys)
    first = registry.checkpoint_log.read()[0].checkpoint
    rewound = site.observe(_signed(key, first.events, first.event_id, first.hash).line(), _key(registry))
    assert rewound.status == "known"  # the same head again is no alarm
    fork = site.observe(_signed(key, first.events, first.event_id, "0" * 64).line(), _key(registry))
    assert fork.status in ALARMS
    with Session(registry.engine) as session, pytest.raises(AuditChainError, match="checkpoint 3 .*not the one"):
        verify_witness(session, site.path, load_public_key(registry.home.keys / PUBLIC_KEY_NAME))
