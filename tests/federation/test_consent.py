"""The withdrawal statement both sides share: records digest known answer, sign → verify, tamper → refuse."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.consent import (
    SignedStatement,
    WithdrawalStatement,
    key_fingerprint,
    read_ids,
    records_digest,
    sign_statement,
    verify_statement,
)
from lifecycle.errors import ConfigurationError, VerificationError

SALT = bytes(range(16))
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def node_key() -> tuple[str, str]:
    """A P-384 node key as a site bundle holds it: OpenSSH private key, PEM public key."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def test_records_digest_known_answer() -> None:
    expected = hashlib.sha256(SALT + b"\x00\x00\x00\x01" + b"7" + b"\x00\x00\x00\x03" + b"p-1").hexdigest()
    assert records_digest(["p-1", 7, "7.0", "p-1"], SALT) == expected  # canonical, de-duplicated, sorted
    assert records_digest(["ab", "c"], SALT) != records_digest(["a", "bc"], SALT)  # length-prefixed
    assert records_digest(["p-1"], SALT) != records_digest(["p-1"], bytes(16))  # salted
    with pytest.raises(ConfigurationError, match="salt"):
        records_digest(["p-1"], b"short")
    with pytest.raises(ConfigurationError, match="empty"):
        records_digest(["p-1", " "], SALT)


def test_a_signed_statement_verifies_and_any_change_is_refused(tmp_path: Path) -> None:
    private, public = node_key()
    statement = WithdrawalStatement.create("st-marys", "records", "patients asked\x00 to leave", record_count=2,
                                           records_digest=records_digest(["p-001", "p-002"], SALT), now=NOW)
    assert statement.reason == "patients asked  to leave" and statement.issued_at == "2026-12-01T09:30:00+00:00"
    signed = sign_statement(statement, private, public)
    assert signed.key == key_fingerprint(public)
    path = tmp_path / "statement.json"
    path.write_text(signed.to_json())
    reread = SignedStatement.read(path)
    assert reread == signed and "p-001" not in path.read_text()  # count and digest only
    verify_statement(reread, public)
    for change in ({"record_count": 3}, {"site": "guys"}, {"scope": "site", "record_count": None,
                                                           "records_digest": ""}, {"reason": "other"}):
        tampered = dataclasses.replace(signed, statement=dataclasses.replace(statement, **change))
        with pytest.raises(VerificationError, match="does not verify"):
            verify_statement(tampered, public)
    _, other = node_key()
    with pytest.raises(VerificationError, match="another signing key"):
        verify_statement(signed, other)
    forged = sign_statement(statement, node_key()[0], public)  # claims the site's key, signed by another
    with pytest.raises(VerificationError, match="does not verify"):
        verify_statement(forged, public)


def test_malformed_statements_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="no record count"):
        WithdrawalStatement("st-marys", "site", 3, "", "r", NOW.isoformat())
    with pytest.raises(ConfigurationError, match="records digest"):
        WithdrawalStatement("st-marys", "records", 3, "xyz", "r", NOW.isoformat())
    with pytest.raises(ConfigurationError, match="scope"):
        WithdrawalStatement("st-marys", "all", None, "", "r", NOW.isoformat())
    with pytest.raises(ConfigurationError, match="site name"):
        WithdrawalStatement("../etc", "site", None, "", "r", NOW.isoformat())
    with pytest.raises(ConfigurationError, match="reason"):
        WithdrawalStatement("st-marys", "site", None, "", "", NOW.isoformat())
    for text in ("not json", "{}", json.dumps({"format": "fedguard-consent-withdrawal/1", "statement": {}}),
                 json.dumps({"format": "fedguard-consent-withdrawal/1", "statement": {"site": "x"}, "key": "0" * 64,
                             "signature": "c2ln"})):
        with pytest.raises(ConfigurationError):
            SignedStatement.from_json(text)


def test_read_ids_takes_the_named_or_only_column(tmp_path: Path) -> None:
    one = tmp_path / "ids.csv"
    one.write_text("patient_id\np-1\n\np-2\nNA\n")
    assert read_ids(one) == ["p-1", "p-2"]
    two = tmp_path / "two.csv"
    two.write_text("patient_id,ward\np-1,a\np-3,b\n")
    assert read_ids(two, "patient_id") == ["p-1", "p-3"]
    with pytest.raises(ConfigurationError, match="2 columns"):
        read_ids(two)
    with pytest.raises(ConfigurationError, match="no column 'mrn'"):
        read_ids(two, "mrn")
    empty = tmp_path / "empty.csv"
    empty.write_text("patient_id\n")
    with pytest.raises(ConfigurationError, match="no record id"):
        read_ids(empty)
