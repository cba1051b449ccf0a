"""The site side of a withdrawal: its consent list, the signed statement, exclusion at every load, final refusal."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.audit import read_log, verify_log
from client.config import SiteIdentity, TrainConfig
from client.consent import ConsentList, ConsentWithdrawnError, excluded_records, withdraw
from client.data import load_site_data
from client.refusal import refusal_of
from federation.bundle import SiteBundle
from federation.consent import SignedStatement, records_digest, verify_statement
from federation.protocol import SiteRefusal
from federation.schema import SiteSchema
from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError, StateError

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SCHEMA = {"label": "y", "label-values": ["0", "1"], "id-column": "patient_id",
          "columns": {"a": {"type": "float"}, "b": {"type": "float"}}}
CSV = "patient_id,a,b,y\np-1,0.1,1.0,0\np-2,0.2,2.0,1\np-3,0.3,3.0,0\n7,0.4,4.0,1\n"


@pytest.fixture
def bundle() -> SiteBundle:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return SiteBundle(federation="fed", site="st-marys", endpoint="fl.example.org:9443", ca_cert="-", site_cert="-",
                      node_public_key=public, issued_at=NOW.isoformat(), site_key="-", node_key=private)


def _withdraw(bundle: SiteBundle, tmp_path: Path, ids: list[str] | None, name: str = "w1.json") -> Path:
    withdraw(bundle, reason="patients asked", ids=ids, consent_path=tmp_path / "site" / "consent.json",
             out=tmp_path / name, audit_log=tmp_path / "site" / "audit.jsonl", now=NOW)
    return tmp_path / name


def test_a_records_withdrawal_is_in_force_at_the_site_and_signed_for_the_coordinator(
        bundle: SiteBundle, tmp_path: Path) -> None:
    path = _withdraw(bundle, tmp_path, ["p-1", "7.0", "p-1"])
    consent_path = tmp_path / "site" / "consent.json"
    assert os.stat(consent_path).st_mode & 0o777 == 0o600
    listed = ConsentList.read(consent_path, "st-marys")
    assert listed.excluded == {"p-1", "7"} and not listed.site_withdrawn
    (entry,) = listed.history
    assert (entry.scope, entry.count, entry.at) == ("records", 2, "2026-12-01T09:30:00+00:00")
    assert records_digest(["p-1", "7"], bytes.fromhex(entry.salt)) == entry.digest  # the site can open it
    signed = SignedStatement.read(path)
    verify_statement(signed, bundle.node_public_key)
    assert (signed.statement.record_count, signed.statement.records_digest) == (2, entry.digest)
    assert "p-1" not in path.read_text()
    (line,) = read_log(tmp_path / "site" / "audit.jsonl")
    assert (line["kind"], line["size"]) == ("consent-withdrawal", len(path.read_bytes()))
    assert line["sha256"] == entry.statement_sha256
    _withdraw(bundle, tmp_path, ["p-2", "p-1"], "w2.json")  # appended: history grows, ids accumulate
    listed = ConsentList.read(consent_path, "st-marys")
    assert listed.excluded == {"p-1", "p-2", "7"} and len(listed.history) == 2
    assert verify_log(tmp_path / "site" / "audit.jsonl") == 2


def test_a_whole_site_withdrawal_is_final_and_refuses_every_message(bundle: SiteBundle, tmp_path: Path) -> None:
    path = _withdraw(bundle, tmp_path, None)
    assert SignedStatement.read(path).statement.scope == "site"
    consent_path = tmp_path / "site" / "consent.json"
    with pytest.raises(ConsentWithdrawnError) as refused:
        excluded_records(consent_path, "st-marys")
    refusal = refusal_of(refused.value)
    assert refusal == SiteRefusal("consent-withdrawn", str(refused.value)) and "st-marys" not in refusal.message
    with pytest.raises(StateError, match="already withdrew its consent as a whole"):
        _withdraw(bundle, tmp_path, ["p-1"], "again.json")
    assert not (tmp_path / "again.json").exists()


def test_the_consent_list_is_guarded(bundle: SiteBundle, tmp_path: Path) -> None:
    assert excluded_records(tmp_path / "none.json", "st-marys") == frozenset()
    assert excluded_records(None, "st-marys") == frozenset()
    _withdraw(bundle, tmp_path, ["p-1"])
    consent_path = tmp_path / "site" / "consent.json"
    with pytest.raises(StateError, match="belongs to site 'st-marys'"):
        ConsentList.read(consent_path, "guys")
    os.chmod(consent_path, 0o644)
    with pytest.raises(StateError, match="chmod 600"):
        excluded_records(consent_path, "st-marys")
    os.chmod(consent_path, 0o600)
    consent_path.write_text("{")
    with pytest.raises(StateError, match="damaged"):
        excluded_records(consent_path, "st-marys")
    with pytest.raises(ConfigurationError, match="no record id"):
        withdraw(bundle, reason="r", ids=[], consent_path=tmp_path / "c.json", out=tmp_path / "o.json",
                 audit_log=tmp_path / "a.jsonl")


def test_withdrawn_records_are_left_out_of_every_load(bundle: SiteBundle, tmp_path: Path) -> None:
    data = tmp_path / "patients.csv"
    data.write_text(CSV)
    schema = SiteSchema.from_mapping(SCHEMA)
    assert schema.features == ("a", "b") and schema.id_column == "patient_id"  # an id is never a feature
    full = load_site_data(data, schema, ("a", "b"), "y", 2)
    assert full.num_examples == 4
    _withdraw(bundle, tmp_path, ["p-2", "7"])
    site = SiteIdentity("st-marys", data, None, tmp_path / "site" / "consent.json")
    kept = load_site_data(data, schema, ("a", "b"), "y", 2, exclude=excluded_records(site.consent_path, site.name))
    assert kept.num_examples == 2 and kept.features[:, 0].tolist() == pytest.approx([0.1, 0.3])
    assert kept.manifest == full.manifest
    implicit = SiteSchema.implicit(("a", "b"), "y", 2)
    with pytest.raises(ConfigurationError, match="names no id column"):
        load_site_data(data, implicit, ("a", "b"), "y", 2, exclude=frozenset({"p-2"}))


def test_the_client_app_loads_without_withdrawn_records(bundle: SiteBundle, tmp_path: Path) -> None:
    from client.app import _site_data

    data, schema = tmp_path / "patients.csv", tmp_path / "schema.toml"
    data.write_text(CSV)
    schema.write_text('label = "y"\nlabel-values = ["0", "1"]\nid-column = "patient_id"\n'
                      '[columns]\na = { type = "float" }\nb = { type = "float" }\n')
    cfg = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=0.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=("a", "b"), target="y", spec=ModelSpec(2, 2, (4,)),
                      seed=0)
    site = SiteIdentity("st-marys", data, schema, tmp_path / "site" / "consent.json")
    assert _site_data(site, cfg).num_examples == 4
    _withdraw(bundle, tmp_path, ["p-1"])
    assert _site_data(site, cfg).num_examples == 3
    _withdraw(bundle, tmp_path, None, "all.json")
    with pytest.raises(ConsentWithdrawnError):
        _site_data(site, cfg)


def test_the_schema_id_column_is_checked_and_never_a_feature(tmp_path: Path) -> None:
    schema = SiteSchema.from_mapping(SCHEMA)
    rows = {"patient_id": ["p-1", "p-1", ""], "a": ["1", "2", "3"], "b": ["1", "2", "3"], "y": ["0", "1", "0"]}
    report = schema.check(list(rows), rows, 3, "f.csv").report
    assert sorted((p.column, p.kind) for p in report.problems) == [("patient_id", "duplicate-id"),
                                                                   ("patient_id", "missing")]
    report = schema.check(["a", "b", "y"], {k: v for k, v in rows.items() if k != "patient_id"}, 3, "f.csv").report
    assert [(p.column, p.kind) for p in report.problems] == [("patient_id", "missing-column")]
    with pytest.raises(ConfigurationError, match="never trained on"):
        SiteSchema.from_mapping({**SCHEMA, "id-column": "a"})
    with pytest.raises(ConfigurationError, match="id-column must be a column name"):
        SiteSchema.from_mapping({**SCHEMA, "id-column": 3})


def test_client_withdraw_writes_the_consent_list_it_is_given_and_the_agent_logs_the_one_in_force(
        bundle: SiteBundle, tmp_path: Path, fedguard_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from typer.testing import CliRunner

    from client.consent import log_in_force
    from federation.bundle import write_bundle
    from fedguard.cli import app

    bundle_path = write_bundle(tmp_path / "st-marys.bundle", bundle)
    ids = tmp_path / "ids.csv"
    ids.write_text("patient_id\np-1\np-2\n")
    chosen = tmp_path / "agent" / "consent.json"
    runner = CliRunner()
    base = ["client", "withdraw", "--bundle", str(bundle_path), "--records", str(ids), "--reason", "asked",
            "--out", str(tmp_path / "w.json")]
    done = runner.invoke(app, [*base, "--consent", str(chosen), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["consent_list"] == str(chosen.resolve())
    assert ConsentList.read(chosen, "st-marys").excluded == {"p-1", "p-2"}
    default = fedguard_home / "site" / "st-marys" / "consent.json"
    assert not default.exists()
    text = runner.invoke(app, [*base[:-1], str(tmp_path / "w2.json")])  # no --consent: what 'client start' uses
    assert text.exit_code == 0 and default.is_file(), text.output
    assert str(default.resolve()) in text.stdout.replace("\n", "")
    with caplog.at_level(logging.INFO, logger="fedguard"):
        log_in_force(chosen, "st-marys")
        log_in_force(tmp_path / "none.json", "st-marys")
    assert f"{chosen}: 2 record(s) excluded" in caplog.text and "no withdrawal yet" in caplog.text
