"""API keys: shown once, stored as a SHA-256 only, audited, checked by scope."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import Session, select

from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.registry import Registry
from lifecycle.registry.tables import ApiKey, AuditEvent
from serving.guards.keys import (
    AuthenticationError,
    ScopeError,
    authenticate,
    create_key,
    hash_secret,
    key_id_of,
    list_keys,
    require_scope,
    revoke_key,
)


def test_key_format_and_only_hash_stored(registry: Registry) -> None:
    created = create_key(registry, "predict", "app", actor="test")
    match = re.fullmatch(r"fgk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", created.key)
    assert match is not None
    key_id, secret = match.groups()
    assert key_id == created.info.key_id
    with Session(registry.engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).one()
        assert row.key_hash == hash_secret(secret)
        stored = " ".join(str(v) for v in row.model_dump().values())
        events = " ".join(e.details_json + e.subject for e in session.exec(select(AuditEvent)).all())
    assert secret not in stored and created.key not in stored and secret not in events
    db_file = registry.home.root / "registry.db"
    assert secret.encode() not in db_file.read_bytes()
    assert created.key not in repr(created)


def test_creation_and_revocation_are_audited_in_the_chain(registry: Registry) -> None:
    created = create_key(registry, "admin", "ops", actor="cli:alice")
    revoke_key(registry, created.info.key_id, actor="cli:bob")
    revoke_key(registry, created.info.key_id, actor="cli:bob")  # idempotent: no second event
    with Session(registry.engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.subject == created.info.key_id)).all()
    assert [(e.action, e.actor) for e in events] == [("apikey.created", "cli:alice"), ("apikey.revoked", "cli:bob")]
    assert json.loads(events[0].details_json) == {"name": "ops", "scope": "admin"}
    assert registry.verify_audit_chain() >= 2


def test_authenticate_accepts_a_valid_key(registry: Registry) -> None:
    created = create_key(registry, "predict")
    assert authenticate(registry, created.key).key_id == created.info.key_id


@pytest.mark.parametrize("presented", [None, "", "Bearer", "fgk_short", "fgk_0123456789abcdef_" + "x" * 200])
def test_authenticate_refuses_missing_or_malformed(registry: Registry, presented: str | None) -> None:
    with pytest.raises(AuthenticationError):
        authenticate(registry, presented)


def test_authenticate_refuses_wrong_secret_unknown_id_and_revoked(registry: Registry) -> None:
    created = create_key(registry, "predict")
    prefix, key_id, secret = created.key.split("_", 2)
    wrong_secret = f"{prefix}_{key_id}_{'A' * len(secret)}"
    unknown_id = f"{prefix}_{'0' * 16}_{secret}"
    for presented in (wrong_secret, unknown_id):
        with pytest.raises(AuthenticationError, match="unknown API key id"):
            authenticate(registry, presented)
    revoke_key(registry, key_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        authenticate(registry, created.key)


def test_admin_implies_predict_but_not_the_reverse(registry: Registry) -> None:
    admin = create_key(registry, "admin").info
    predict = create_key(registry, "predict").info
    assert require_scope(admin, "predict") is admin
    assert require_scope(admin, "admin") is admin
    with pytest.raises(ScopeError) as caught:
        require_scope(predict, "admin")
    assert caught.value.required == "admin"
    assert caught.value.exit_code == 7


def test_create_rejects_unknown_scope_and_long_name(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="unknown scope 'root'"):
        create_key(registry, "root")
    with pytest.raises(ConfigurationError, match="at most 128"):
        create_key(registry, "predict", "n" * 129)
    assert list_keys(registry) == []


def test_revoke_unknown_and_malformed_ids(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="no API key with id"):
        revoke_key(registry, "0" * 16)
    with pytest.raises(ConfigurationError, match="16 hex digits"):
        revoke_key(registry, "not-a-key")


def test_key_id_of_accepts_an_id_or_a_whole_key(registry: Registry) -> None:
    created = create_key(registry, "predict")
    assert key_id_of(created.key) == created.info.key_id
    assert key_id_of(created.info.key_id) == created.info.key_id


def test_list_keys_shows_scope_and_revocation(registry: Registry) -> None:
    first = create_key(registry, "predict", "a")
    second = create_key(registry, "admin", "b")
    revoke_key(registry, first.info.key_id)
    listed = {info.key_id: info for info in list_keys(registry)}
    assert listed[first.info.key_id].revoked and not listed[second.info.key_id].revoked
    assert listed[second.info.key_id].scope == "admin"
