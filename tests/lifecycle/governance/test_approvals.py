"""Signed approvals and overrides (issue 14, point 3): Ed25519 keys, verifiable by anyone; tamper tests; the CLI."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlmodel import Session, select
from typer.testing import CliRunner

from fedguard.cli import app
from lifecycle.errors import ConfigurationError, GovernanceError, NotFoundError, StateError
from lifecycle.governance import stages
from lifecycle.governance.approvals import ApprovalError, Statement, approvals, approve, verify_statement
from lifecycle.governance.operator import KEY_ENV, ApproverKey, init_key, load_key, public_path
from lifecycle.governance.tables import Approval
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings
from tests.conftest import make_publication
from tests.lifecycle.governance.test_stages import add_versions, failing

runner = CliRunner()


@pytest.fixture
def backend(backend_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(backend_settings)
    publish_model(opened, make_publication())
    yield opened
    opened.engine.dispose()


def test_an_approval_verifies_with_the_public_key_alone_and_tampering_fails(backend: Registry) -> None:
    key, other = ApproverKey.generate("Dr A. Jones"), ApproverKey.generate("Mallory")
    record = approve(backend, "demo", 1, stage="production", environment="clinic-north", key=key,
                     reason="validated on the north cohort", actor="jones")
    # What an outside verifier does, with cryptography only (docs/governance.md).
    public = load_pem_public_key(record.public_key_pem.encode())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(base64.b64decode(record.signature), record.statement.encode())
    statement = verify_statement(record.statement.encode(), record.signature, key.public_pem)
    assert (statement.action, statement.model, statement.version, statement.stage, statement.environment) == (
        "approve", "demo", 1, "production", "clinic-north")
    assert statement.artifact_digest == backend.get_version("demo", 1).artifact.digest
    assert record.statement == json.dumps(json.loads(record.statement), sort_keys=True, separators=(",", ":"))
    tampered = record.statement.replace('"clinic-north"', '"clinic-south"').encode()
    with pytest.raises(ApprovalError, match="does not verify"):
        verify_statement(tampered, record.signature, key.public_pem)
    with pytest.raises(ApprovalError, match="does not verify"):
        verify_statement(record.statement.encode(), record.signature, other.public_pem)
    (again,) = approvals(backend, "demo", 1)
    assert again.approver == key.fingerprint and again.approver_name == "Dr A. Jones"
    with pytest.raises(ApprovalError, match=f"approval #{record.id} of demo:1 does not verify"):
        approvals(backend, "demo", 1, public_key_pem=other.public_pem)
    with Session(backend.engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "approval.signed")).one()
        assert event.actor == f"approver:jones/ed25519:{key.fingerprint[:16]}"


def test_an_altered_registry_row_no_longer_verifies_nor_counts(backend: Registry,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    key = ApproverKey.generate()
    record = approve(backend, "demo", 1, stage="production", environment="clinic-north", key=key)
    with backend.transaction() as session:  # an administrator moves the approval to another environment
        row = session.get(Approval, record.id)
        assert row is not None
        row.environment = "clinic-south"
        session.add(row)
    with pytest.raises(ApprovalError, match="environment differ"):
        approvals(backend, "demo", 1)
    monkeypatch.setattr(stages, "required_approvals", lambda registry, name, stage: 1)
    with pytest.raises(GovernanceError, match="0 of the 1"):
        stages.StageStore(backend).promote("demo", 1, to="production", environment="clinic-south", actor="cli:x")
    forged = Statement(**{**json.loads(record.statement), "approver": "0" * 64})
    with pytest.raises(ApprovalError, match="does not verify"):
        verify_statement(forged.canonical(), record.signature, key.public_pem)


def test_operator_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys" / "approver-key.pem"
    created = init_key(path, name="Dr A. Jones")
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_path(path).read_text() == created.public_pem
    with pytest.raises(ConfigurationError, match="--force"):
        init_key(path)
    monkeypatch.setenv(KEY_ENV, str(path))
    loaded = load_key()
    assert (loaded.fingerprint, loaded.name) == (created.fingerprint, "Dr A. Jones")
    assert init_key(path, force=True).fingerprint != created.fingerprint
    path.chmod(0o644)
    with pytest.raises(StateError, match="chmod 600"):
        load_key(path)
    with pytest.raises(NotFoundError, match="operator init"):
        load_key(tmp_path / "none.pem")


# ------------------------------------------------------------------ the CLI, mounted as fedguard.cli mounts it
def fedguard(*args: str) -> tuple[int, str, BaseException | None]:
    """``fedguard ARGS`` through the real lazily-mounted commands (errors as exceptions, as main() sees them)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.exception


def test_the_governance_commands_end_to_end(registry: Registry, published: VersionRecord, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    add_versions(registry, 1)
    key = tmp_path / "approver-key.pem"
    code, out, _ = fedguard("operator", "init", "--name", "Dr A. Jones", "--key", str(key), "--json")
    assert code == 0 and json.loads(out)["name"] == "Dr A. Jones"
    monkeypatch.setenv(KEY_ENV, str(key))
    code, out, _ = fedguard("operator", "show")
    assert code == 0 and load_key(key).fingerprint in out

    code, out, _ = fedguard("models", "promote", "demo:1", "--to", "production", "--env", "clinic-north", "--json")
    assert code == 0 and json.loads(out)["deployment"]["stable_version"] == 1
    monkeypatch.setattr(stages, "required_approvals", lambda registry, name, stage: 1)
    code, _, error = fedguard("models", "promote", "demo:2", "--to", "production", "--env", "clinic-north")
    assert isinstance(error, GovernanceError) and "0 of the 1" in str(error)
    assert fedguard("models", "approve", "demo:2", "--env", "clinic-north", "--reason", "ok")[0] == 0
    code, out, _ = fedguard("models", "promote", "demo:2", "--to", "production", "--env", "clinic-north")
    assert code == 0 and "version 1 goes back to staging" in out

    failing(monkeypatch)
    monkeypatch.setattr(stages, "required_approvals", lambda registry, name, stage: 0)
    _, _, error = fedguard("models", "promote", "demo:2", "--to", "staging", "--env", "clinic-south")
    assert isinstance(error, GovernanceError) and error.exit_code == 11 and "min-accuracy" in str(error)
    _, _, error = fedguard("models", "promote", "demo:2", "--to", "staging", "--env", "clinic-south", "--override")
    assert isinstance(error, ConfigurationError) and "--reason" in str(error)
    code, out, _ = fedguard("models", "promote", "demo:2", "--to", "staging", "--env", "clinic-south", "--override",
                            "--reason", "pilot")
    assert code == 0 and "OVERRIDDEN" in out and "min-accuracy" in out

    code, out, _ = fedguard("models", "approvals", "demo:2", "--json")
    assert code == 0 and [(a["kind"], a["used"]) for a in json.loads(out)] == [("approve", True), ("override", True)]
    other = tmp_path / "other.pem"
    init_key(other)
    _, _, error = fedguard("models", "approvals", "demo:2", "--public-key", str(public_path(other)))
    assert isinstance(error, ApprovalError) and error.exit_code == 5
    assert fedguard("models", "approvals", "demo:2", "--public-key", str(public_path(key)))[0] == 0

    code, out, _ = fedguard("models", "demote", "demo:2", "--env", "clinic-north", "--reason", "recall", "--json")
    assert code == 0 and json.loads(out)["restored"] == 1
    code, out, _ = fedguard("models", "history", "demo", "--json")
    history = json.loads(out)
    assert sorted(history["environments"]) == ["clinic-north", "clinic-south"]
    assert [s["override"] for s in history["environments"]["clinic-south"]["stages"]] == [True]
    assert history["live"] == {"clinic-north": {"production": [1], "staging": [2]}, "clinic-south": {"staging": [2]}}
    code, out, _ = fedguard("models", "history", "demo", "--env", "clinic-south")
    assert code == 0 and "OVERRIDE" in out
    assert DeploymentStore(registry, "clinic-north").state("demo").stable_version == 1
    _, _, error = fedguard("models", "promote", "demo", "--to", "staging")
    assert isinstance(error, ConfigurationError) and error.exit_code == 2
    _, _, error = fedguard("models", "promote", "demo:9", "--to", "staging")
    assert isinstance(error, NotFoundError) and error.exit_code == 4
