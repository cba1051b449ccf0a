"""`fedguard client withdraw` at the site, `fedguard site withdraw` at the coordinator, `models list --tainted`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedguard.cli import app
from lifecycle.errors import ConfigurationError, NotFoundError, VerificationError
from lifecycle.registry import Registry
from tests.lifecycle.governance.consent_helpers import publish

runner = CliRunner()


@pytest.fixture
def bundle(registry: Registry, tmp_path: Path) -> Path:
    """A federation with site st-marys enrolled (its bundle returned) and demo:1 trained on it and guys."""
    assert runner.invoke(app, ["coordinator", "init", "--federation", "fed"]).exit_code == 0
    out = tmp_path / "st-marys.bundle"
    enrolled = runner.invoke(app, ["site", "enroll", "st-marys", "--out", str(out)])
    assert enrolled.exit_code == 0, enrolled.output
    publish(registry, ("st-marys", "guys"))
    return out


def ok(*args: str) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def refused(*args: str) -> tuple[type[BaseException], int]:
    result = runner.invoke(app, list(args))
    assert result.exception is not None, result.output
    return type(result.exception), int(getattr(result.exception, "exit_code", -1))


def test_a_site_signed_withdrawal_from_agent_to_registry(bundle: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("patient_id\np-1\np-2\n")
    statement = tmp_path / "statement.json"
    site = ok("client", "withdraw", "--bundle", str(bundle), "--records", str(ids), "--reason", "asked",
              "--out", str(statement))
    assert (site["record_count"], site["new_ids"], site["statement"]) == (2, 2, str(statement))
    recorded = ok("site", "withdraw", "st-marys", "--reason", "site statement 2026-12-01", "--statement",
                  str(statement))
    withdrawal = recorded["withdrawal"]
    assert isinstance(withdrawal, dict)
    assert (withdrawal["source"], withdrawal["signed"], withdrawal["scope"], withdrawal["record_count"]) == (
        "site", True, "records", 2)
    assert recorded["tainted"] == ["demo:1"]
    assert refused("site", "withdraw", "st-marys", "--reason", "again", "--statement", str(statement)) == (
        ConfigurationError, 2)
    tampered = tmp_path / "tampered.json"
    data = json.loads(statement.read_text())
    data["statement"]["record-count"] = 1
    tampered.write_text(json.dumps(data))
    assert refused("site", "withdraw", "st-marys", "--reason", "r", "--statement", str(tampered)) == (
        VerificationError, 5)
    assert refused("site", "withdraw", "guys", "--reason", "r", "--statement", str(statement)) == (NotFoundError, 4)
    tainted = runner.invoke(app, ["models", "list", "--tainted", "--json"])
    (entry,) = json.loads(tainted.stdout)
    assert entry["ref"] == "demo:1" and [w["site"] for w in entry["withdrawals"]] == ["st-marys"]


def test_the_coordinator_records_a_withdrawal_on_the_sites_behalf(bundle: Path, tmp_path: Path) -> None:
    assert refused("site", "withdraw", "nowhere", "--reason", "r") == (NotFoundError, 4)
    ids = tmp_path / "ids.csv"
    ids.write_text("mrn,ward\nMRN-PATIENT-17,a\nMRN-PATIENT-18,b\n")
    both = ("site", "withdraw", "guys", "--reason", "r", "--records", str(ids), "--statement", str(ids))
    assert refused(*both) == (ConfigurationError, 2)
    human = runner.invoke(app, ["site", "withdraw", "guys", "--reason", "3 patients", "--records", str(ids),
                                "--id-column", "mrn"])
    assert human.exit_code == 0, human.output
    assert "withdrawal #1" in human.output and "demo:1" in human.output and "fedguard client withdraw" in human.output
    assert "MRN-PATIENT" not in human.output  # (a bare "17" could appear in the random salted digest)
    whole = ok("site", "withdraw", "st-marys", "--reason", "left")  # enrolled: found even without lineage
    assert whole["tainted"] == ["demo:1"]
    listing = runner.invoke(app, ["models", "list", "--tainted"])
    assert listing.exit_code == 0 and "whole site" in listing.output and "2 record(s)" in listing.output


def _variant(signature: str, *, high_s: bool = False, pad_bits: bool = False) -> str:
    """Another encoding of the same ECDSA signature: (r, n - s), and/or non-zero base64 padding bits."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    from coordinator.consent_cli import _CURVE_ORDERS

    der = base64.b64decode(signature)
    if high_s:
        r, s = decode_dss_signature(der)
        der = encode_dss_signature(r, _CURVE_ORDERS["secp384r1"] - s)
    text = base64.b64encode(der).decode()
    if pad_bits and text.endswith("="):
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        data = text.rstrip("=")
        text = data[:-1] + alphabet[alphabet.index(data[-1]) | 1] + text[len(data):]
    return text


def test_another_encoding_of_a_recorded_signature_is_still_a_replay(bundle: Path, tmp_path: Path) -> None:
    statement = tmp_path / "statement.json"
    assert runner.invoke(app, ["client", "withdraw", "--bundle", str(bundle), "--all", "--reason", "leaving",
                               "--out", str(statement)]).exit_code == 0
    original = json.loads(statement.read_text())
    replays = []
    for high_s, pad_bits in ((True, False), (False, True), (True, True)):
        data = {**original, "signature": _variant(original["signature"], high_s=high_s, pad_bits=pad_bits)}
        replay = tmp_path / f"replay-{high_s}-{pad_bits}.json"
        replay.write_text(json.dumps(data))
        replays.append(replay)
    first = ok("site", "withdraw", "st-marys", "--reason", "statement", "--statement", str(replays[0]))
    assert first["withdrawal"]["signed"] is True  # type: ignore[index]
    for replay in (statement, *replays[1:]):
        result = runner.invoke(app, ["site", "withdraw", "st-marys", "--reason", "again", "--statement", str(replay)])
        assert isinstance(result.exception, ConfigurationError), result.output
        assert "already recorded (withdrawal #1)" in str(result.exception)


def test_a_statement_signed_by_a_rotated_key_needs_accept_revoked_key(
    bundle: Path, tmp_path: Path, registry: Registry
) -> None:
    from sqlmodel import select

    from lifecycle.registry.tables import AuditEvent

    statement = tmp_path / "statement.json"
    assert runner.invoke(app, ["client", "withdraw", "--bundle", str(bundle), "--all", "--reason", "leaving",
                               "--out", str(statement)]).exit_code == 0
    rotated = runner.invoke(app, ["site", "rotate", "st-marys", "--out", str(tmp_path / "new.bundle")])
    assert rotated.exit_code == 0, rotated.output
    result = runner.invoke(app, ["site", "withdraw", "st-marys", "--reason", "r", "--statement", str(statement)])
    assert isinstance(result.exception, VerificationError) and "only the site's active key" in str(result.exception)
    assert "--accept-revoked-key" in str(result.exception) and "site 'st-marys''s" not in str(result.exception)
    accepted = runner.invoke(app, ["site", "withdraw", "st-marys", "--reason", "r", "--statement", str(statement),
                                   "--accept-revoked-key"])
    assert accepted.exit_code == 0, accepted.output
    assert "warning" in accepted.stderr and "--accept-revoked-key" in accepted.stderr
    with registry.transaction() as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "consent.withdrawn")).one()
    assert "rotated node key" in json.loads(event.details_json)["reason"]


def test_the_canonical_signature_is_one_text_per_signature() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from coordinator.consent_cli import canonical_signature, statement_key
    from federation.consent import WithdrawalStatement, sign_statement, verify_statement

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    statement = WithdrawalStatement.create("st-marys", "site", "leaving")
    padded = next(s for s in (sign_statement(statement, private, public) for _ in range(200))
                  if s.signature.endswith("="))  # a DER length that leaves base64 padding bits
    canonical = canonical_signature(padded, public)
    verify_statement(canonical, public)
    for high_s, pad_bits in ((True, False), (False, True), (True, True)):
        variant = dataclasses.replace(padded, signature=_variant(padded.signature, high_s=high_s, pad_bits=pad_bits))
        assert variant.signature != padded.signature
        verify_statement(variant, public)  # every variant verifies: only the canonical text tells them apart
        assert canonical_signature(variant, public).signature == canonical.signature
        assert statement_key(variant) == statement_key(padded)
    with pytest.raises(VerificationError, match="malformed"):
        canonical_signature(dataclasses.replace(padded, signature="bm90IERFUg=="), public)
