"""Provisioning: the CA and certificates, bundles on disk, and the site registry's rotate/revoke."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlmodel import Session

from coordinator.provisioning import FederationLayout, SiteRegistry, init_federation
from coordinator.provisioning.authority import create_ca
from federation.bundle import BundleFormatError, BundlePermissionError, read_bundle
from lifecycle.audit import verify_chain
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from tests.coordinator.federation_fixtures import Federation, make_federation


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return make_federation(tmp_path)


def _cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def test_init_writes_ca_server_cert_with_sans_and_private_keys(fed: Federation) -> None:
    layout = fed.layout
    server = _cert(layout.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "coord.example"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(a)
                                                             for a in ("127.0.0.1", "::1", "10.0.0.5")}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    server.verify_directly_issued_by(_cert(layout.ca_cert.read_bytes()))
    for key in (layout.ca_key, layout.server_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(layout.root).st_mode) == 0o700
    config = layout.read_config()
    assert (config.federation, config.endpoint) == ("cardio", "coord.example:9443")


def test_init_refuses_to_replace_a_federation(fed: Federation) -> None:
    with pytest.raises(StateError, match="already exists"):
        init_federation(fed.home, "cardio")


def test_enroll_writes_a_0600_bundle_whose_chain_verifies(fed: Federation) -> None:
    bundle = fed.enroll("st-marys")
    path = fed.home.parent / "st-marys.bundle"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    read = read_bundle(path)
    assert read == bundle and read.federation == "cardio" and read.endpoint == "coord.example:9443"
    site = _cert(read.site_cert)
    site.verify_directly_issued_by(_cert(read.ca_cert))
    assert site.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "st-marys"
    assert list(site.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    node = load_ssh_private_key(read.node_key.encode(), None)
    assert isinstance(node, ec.EllipticCurvePrivateKey) and node.curve.name == "secp384r1"
    assert "PRIVATE KEY" not in repr(read)
    with pytest.raises((ValueError, InvalidSignature)):  # a certificate from another CA does not chain
        site.verify_directly_issued_by(create_ca("other").certificate)


def test_registry_stores_public_material_only(fed: Federation) -> None:
    bundle = fed.enroll("st-marys")
    (info,) = fed.sites.sites()
    assert info.status == "active" and info.credentials_issued == 1
    (credential,) = fed.sites.credentials()
    assert credential.node_public_key == bundle.node_public_key
    dump = json.dumps([c.model_dump(mode="json") for c in fed.sites.credentials()])
    assert "PRIVATE" not in dump


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_bundle_readable_by_others_is_refused(fed: Federation, mode: int) -> None:
    fed.enroll("st-marys")
    path = fed.home.parent / "st-marys.bundle"
    path.chmod(mode)
    with pytest.raises(BundlePermissionError, match="chmod 600"):
        read_bundle(path)


def test_bundle_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.bundle"
    path.write_text('{"format": "something-else"}')
    path.chmod(0o600)
    with pytest.raises(BundleFormatError):
        read_bundle(path)


def test_rotate_changes_only_that_site(fed: Federation) -> None:
    first = fed.enroll("st-marys")
    other = fed.enroll("guys")
    second = fed.sites.rotate("st-marys", fed.home.parent / "st-marys-2.bundle")
    assert second.site_cert != first.site_cert and second.node_key != first.node_key
    state = fed.sites.credential_state
    old_serial = format(_cert(first.site_cert).serial_number, "x")
    assert state(old_serial) == ("st-marys", "rotated")  # refused, and logged as a rotation by the gateway
    assert state(format(_cert(second.site_cert).serial_number, "x")) == ("st-marys", "active")
    assert state(format(_cert(other.site_cert).serial_number, "x")) == ("guys", "active")
    crl = x509.load_pem_x509_crl(fed.layout.crl.read_bytes())
    assert [r.serial_number for r in crl] == [_cert(first.site_cert).serial_number]
    crl.is_signature_valid(_cert(first.ca_cert).public_key())  # type: ignore[arg-type]
    infos = {i.name: i for i in fed.sites.sites()}
    assert infos["st-marys"].credentials_issued == 2 and infos["guys"].credentials_issued == 1


def test_revoke_persists_across_a_reopened_registry(fed: Federation) -> None:
    bundle = fed.enroll("st-marys")
    fed.sites.revoke("st-marys")
    fed.registry.engine.dispose()
    reopened = SiteRegistry(Registry.open(Settings(home=fed.home)), FederationLayout.under(fed.home))
    serial = format(_cert(bundle.site_cert).serial_number, "x")
    assert reopened.credential_state(serial) == ("st-marys", "revoked")
    (info,) = reopened.sites()
    assert info.status == "revoked" and info.revoked_at is not None
    with pytest.raises(StateError, match="revoked for good"):
        reopened.rotate("st-marys", fed.home.parent / "again.bundle")
    with Session(reopened.registry.engine) as session:
        assert verify_chain(session) == 2  # enrolled + revoked, in the audit chain


def test_errors_name_the_fix(fed: Federation) -> None:
    fed.enroll("st-marys")
    with pytest.raises(ConfigurationError, match="already enrolled"):
        fed.enroll("st-marys")
    with pytest.raises(NotFoundError, match="site list"):
        fed.sites.revoke("nobody")
    with pytest.raises(ConfigurationError, match="invalid site name"):
        fed.enroll("St Mary's")
    for endpoint in ("fl.example.org", "::1:9443", "host:0"):
        with pytest.raises(ConfigurationError, match="invalid endpoint"):
            fed.sites.enroll("kings", fed.home.parent / "k.bundle", endpoint=endpoint)
    assert fed.sites.enroll("kings", fed.home.parent / "k.bundle", endpoint="[::1]:9443").port == 9443


@pytest.mark.postgres
def test_site_registry_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    layout = init_federation(home, "cardio")
    sites = SiteRegistry(Registry.open(Settings(home=home, database_url=pg_url)), layout)
    try:
        first = sites.enroll("st-marys", tmp_path / "a.bundle")
        sites.enroll("guys", tmp_path / "b.bundle")
        second = sites.rotate("st-marys", tmp_path / "c.bundle")
        sites.revoke("guys")
        assert sites.credential_state(format(_cert(first.site_cert).serial_number, "x")) == ("st-marys", "rotated")
        assert sites.credential_state(format(_cert(second.site_cert).serial_number, "x")) == ("st-marys", "active")
        assert {i.name: i.status for i in sites.sites()} == {"guys": "revoked", "st-marys": "active"}
        assert len(x509.load_pem_x509_crl(layout.crl.read_bytes())) == 2
        with Session(sites.registry.engine) as session:
            assert verify_chain(session) == 4
    finally:
        sites.registry.engine.dispose()


def test_crl_is_re_signed_before_it_expires(fed: Federation) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    fed.sites.write_crl(now=t0)
    assert not fed.sites.refresh_crl(now=t0 + timedelta(hours=20))
    assert fed.sites.refresh_crl(now=t0 + timedelta(days=2))
    crl = x509.load_pem_x509_crl(fed.layout.crl.read_bytes())
    assert crl.next_update_utc is not None and crl.next_update_utc > t0 + timedelta(days=8)


def test_a_failed_enrolment_leaves_no_bundle(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    def boom(self: Session) -> None:
        raise SQLAlchemyError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(Session, "commit", boom)
        with pytest.raises(StateError, match="rolled back"):
            fed.enroll("st-marys")
    assert not (fed.home.parent / "st-marys.bundle").exists()
    assert fed.sites.sites() == []
