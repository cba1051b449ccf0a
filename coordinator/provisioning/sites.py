"""The site registry: enrol, rotate, revoke and list sites; every change audited.

Each change is one registry transaction with its audit event (DESIGN.md §6),
then the CRL is re-signed from the registry's revoked serials, so the gateway
refuses the old certificate at the next handshake. The coordinator keeps only
public halves (certificate serial and fingerprint, node public key): the
private keys exist in the bundle and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlmodel import Session, col, select

from coordinator import logger
from coordinator.provisioning.authority import (
    build_crl,
    create_node_key,
    fingerprint,
    issue_site_certificate,
    serial_hex,
)
from coordinator.provisioning.federation import FederationLayout
from coordinator.provisioning.tables import ACTIVE, REVOKED, ROTATED, FederationSite, SiteCredential
from federation.bundle import SiteBundle, write_bundle
from lifecycle import audit
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.registry import Registry

CRL_REFRESH = timedelta(days=1)
_SITE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_site_name(name: str) -> str:
    """``name`` unchanged if it is a valid site name (it becomes a certificate CN and a file name), else refuse it."""
    if not _SITE.match(name):
        raise ConfigurationError(f"invalid site name '{name}': use 1-64 lowercase letters, digits, '.', '_' or '-'")
    return name


def check_endpoint(endpoint: str | None) -> None:
    """Refuse an ``--endpoint`` that is not ``host:port`` (``[v6]:port`` for IPv6)."""
    if endpoint is None:
        return
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not host.startswith("[")):
        raise ConfigurationError(f"invalid endpoint '{endpoint}': use host:port, e.g. fl.example.org:9443 "
                                 "or [2001:db8::1]:9443")


@dataclass(frozen=True)
class SiteInfo:
    """What the registry knows about a site (public material only)."""

    name: str
    status: str
    cert_serial: str
    cert_fingerprint: str
    node_key_fingerprint: str
    issued_at: datetime
    not_after: datetime
    credentials_issued: int
    revoked_at: datetime | None


def node_keys(registry: Registry) -> list[tuple[str, bool, str]]:
    """``(site, active, node public key PEM)`` for every credential ``registry`` ever issued.

    The ServerApp reads it too (``coordinator.identity``): it needs no federation layout.
    """
    with Session(registry.engine) as session:
        rows = session.exec(select(SiteCredential, FederationSite)
                            .where(SiteCredential.site_id == FederationSite.id)
                            .order_by(col(SiteCredential.id))).all()
        return [(site.name, credential.status == ACTIVE and site.status == ACTIVE, credential.node_public_key)
                for credential, site in rows]


def contract_digest(contract: str) -> str | None:
    """The SHA-256 of a bundle's contract JSON (``DataContract.digest``), None without one."""
    return hashlib.sha256(contract.encode()).hexdigest() if contract else None


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class SiteRegistry:
    """Sites and their credentials in the registry database, plus the federation's CRL."""

    def __init__(self, registry: Registry, layout: FederationLayout) -> None:
        self.registry = registry
        self.layout = layout

    # -- writes ----------------------------------------------------------------
    def enroll(self, name: str, out: Path, *, endpoint: str | None = None, actor: str = "cli",
               now: datetime | None = None, he_secret_context: bytes | None = None) -> SiteBundle:
        """Create a site, issue its first credentials and write its bundle to ``out`` (0600).

        ``he_secret_context``: the federation's CKKS secret context to carry
        inside the bundle (never stored by the registry).
        """
        validate_site_name(name)
        check_endpoint(endpoint)
        with self._bundle_guard(out), self.registry.transaction() as session:
            if session.exec(select(FederationSite).where(FederationSite.name == name)).first() is not None:
                raise ConfigurationError(f"site '{name}' is already enrolled; use 'fedguard site rotate {name}' "
                                         "for new credentials")
            site = FederationSite(name=name, created_at=now or datetime.now(UTC))
            session.add(site)
            session.flush()
            bundle, credential = self._issue(site, endpoint, now, he_secret_context)
            session.add(credential)
            audit.record(session, "site.enrolled", actor=actor, subject=name,
                         details={"serial": credential.cert_serial, "fingerprint": credential.cert_fingerprint,
                                  "node_key": credential.node_key_fingerprint,
                                  "contract": contract_digest(bundle.contract),
                                  "he_secret_context": he_secret_context is not None})
            self._write(out, bundle)
        logger.info("enrolled site %s (certificate serial %s)", name, credential.cert_serial)
        return bundle

    def rotate(self, name: str, out: Path, *, endpoint: str | None = None, actor: str = "cli",
               now: datetime | None = None, he_secret_context: bytes | None = None) -> SiteBundle:
        """Issue new credentials for ``name`` only; its previous ones are revoked.

        The registry never holds the CKKS secret context: pass it again
        (``he_secret_context``) for the new bundle to carry it.
        """
        now = now or datetime.now(UTC)
        check_endpoint(endpoint)
        with self._bundle_guard(out), self.registry.transaction() as session:
            site = self._site(session, name)
            if site.status != ACTIVE:
                raise StateError(f"site '{name}' was revoked for good; enrol it under a new name if it must return")
            old = self._revoke_credentials(session, site, now, ROTATED)
            bundle, credential = self._issue(site, endpoint, now, he_secret_context)
            session.add(credential)
            audit.record(session, "site.rotated", actor=actor, subject=name,
                         details={"serial": credential.cert_serial, "revoked_serials": old,
                                  "node_key": credential.node_key_fingerprint,
                                  "contract": contract_digest(bundle.contract),
                                  "he_secret_context": he_secret_context is not None})
            self._write(out, bundle)
        self.write_crl()
        return bundle

    def revoke(self, name: str, *, actor: str = "cli", reason: str = "revoked", now: datetime | None = None) -> None:
        """Revoke ``name`` for good: its certificates go on the CRL, its node keys get unregistered."""
        now = now or datetime.now(UTC)
        with self.registry.transaction() as session:
            site = self._site(session, name)
            if site.status == REVOKED:
                raise StateError(f"site '{name}' is already revoked")
            serials = self._revoke_credentials(session, site, now, reason[:64])
            site.status, site.revoked_at = REVOKED, now
            session.add(site)
            audit.record(session, "site.revoked", actor=actor, subject=name,
                         details={"serials": serials, "reason": reason})
        self.write_crl()

    def refresh_crl(self, *, max_age: timedelta = CRL_REFRESH, now: datetime | None = None) -> bool:
        """Re-sign the CRL if it is missing or older than ``max_age``; return whether it was rewritten.

        A CRL past its ``nextUpdate`` makes OpenSSL refuse *every* client
        (``CRL has expired``), so a running coordinator refreshes it daily,
        well inside the CRL's 7-day lifetime.
        """
        now = now or datetime.now(UTC)
        try:
            crl = x509.load_pem_x509_crl(self.layout.crl.read_bytes())
            if now - crl.last_update_utc < max_age:
                return False
        except (OSError, ValueError):
            pass
        self.write_crl(now=now)
        return True

    def write_crl(self, *, now: datetime | None = None) -> bytes:
        """Re-sign the CRL from every revoked serial and write it atomically."""
        revoked = [(c.cert_serial, _aware(c.revoked_at) or datetime.now(UTC))
                   for c in self.credentials(status=REVOKED)]
        crl = build_crl(self.layout.ca(), revoked, now=now)
        tmp = self.layout.crl.with_name(".crl.pem.tmp")
        tmp.write_bytes(crl)
        tmp.replace(self.layout.crl)
        return crl

    # -- reads -----------------------------------------------------------------
    def sites(self) -> list[SiteInfo]:
        with Session(self.registry.engine) as session:
            out = []
            for site in session.exec(select(FederationSite).order_by(col(FederationSite.name))).all():
                creds = session.exec(select(SiteCredential).where(SiteCredential.site_id == site.id)
                                     .order_by(col(SiteCredential.id))).all()
                last = creds[-1]
                out.append(SiteInfo(site.name, site.status, last.cert_serial, last.cert_fingerprint,
                                    last.node_key_fingerprint, _aware(last.issued_at) or last.issued_at,
                                    _aware(last.not_after) or last.not_after, len(creds), _aware(site.revoked_at)))
            return out

    def credentials(self, *, status: str | None = None) -> list[SiteCredential]:
        with Session(self.registry.engine, expire_on_commit=False) as session:
            query = select(SiteCredential)
            if status is not None:
                query = query.where(SiteCredential.status == status)
            return list(session.exec(query.order_by(col(SiteCredential.id))).all())

    def node_keys(self) -> list[tuple[str, bool, str]]:
        """``(site, active, node public key PEM)`` for every credential ever issued."""
        return node_keys(self.registry)

    def credential_state(self, serial: str) -> tuple[str, str] | None:
        """``(site, status)`` of the credential with ``serial``; ``None`` if this federation never issued it.

        ``status`` is ``active``, ``revoked`` (the site was revoked), or
        ``rotated`` (the site is active but this credential was replaced by
        ``fedguard site rotate``: the site must use its new bundle). Only
        ``active`` may connect.
        """
        with Session(self.registry.engine) as session:
            row = session.exec(select(SiteCredential, FederationSite)
                               .where(SiteCredential.cert_serial == serial.lower())
                               .where(SiteCredential.site_id == FederationSite.id)).first()
            if row is None:
                return None
            credential, site = row
            if site.status == REVOKED:
                return site.name, REVOKED
            if credential.status == REVOKED:
                return site.name, ROTATED if credential.revoked_reason == ROTATED else REVOKED
            return site.name, ACTIVE

    def contract_json(self) -> str:
        """The federation's data contract as canonical JSON for a bundle; empty before 'coordinator data' ran."""
        if not self.layout.contract.is_file():
            return ""
        from federation.contract import DataContract  # numpy: only when a contract exists

        return DataContract.read(self.layout.contract).to_json()

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    @contextmanager
    def _bundle_guard(out: Path) -> Iterator[None]:
        """Delete a bundle written by a transaction that then failed (no credentials without a record)."""
        existed = out.exists()
        try:
            yield
        except BaseException:
            if not existed:
                out.unlink(missing_ok=True)
            raise

    @staticmethod
    def _site(session: Session, name: str) -> FederationSite:
        site = session.exec(select(FederationSite).where(FederationSite.name == name)).first()
        if site is None:
            raise NotFoundError(f"no enrolled site '{name}'; see 'fedguard site list'")
        return site

    @staticmethod
    def _revoke_credentials(session: Session, site: FederationSite, now: datetime, reason: str) -> list[str]:
        serials = []
        for credential in session.exec(select(SiteCredential).where(SiteCredential.site_id == site.id,
                                                                    SiteCredential.status == ACTIVE)).all():
            credential.status, credential.revoked_at, credential.revoked_reason = REVOKED, now, reason
            session.add(credential)
            serials.append(credential.cert_serial)
        return serials

    def _issue(self, site: FederationSite, endpoint: str | None, now: datetime | None,
               he_secret_context: bytes | None = None) -> tuple[SiteBundle, SiteCredential]:
        config = self.layout.read_config()
        ca = self.layout.ca()
        pair = issue_site_certificate(ca, config.federation, site.name, now=now)
        node = create_node_key()
        cert = pair.certificate
        assert site.id is not None
        credential = SiteCredential(
            site_id=site.id, cert_serial=serial_hex(cert), cert_fingerprint=fingerprint(cert),
            node_public_key=node.public_pem.decode(), node_key_fingerprint=node.fingerprint,
            issued_at=now or datetime.now(UTC), not_after=cert.not_valid_after_utc)
        bundle = SiteBundle(
            federation=config.federation, site=site.name, endpoint=endpoint or config.endpoint,
            ca_cert=ca.cert_pem.decode(), site_cert=pair.cert_pem.decode(), node_public_key=node.public_pem.decode(),
            issued_at=(now or datetime.now(UTC)).isoformat(), site_key=pair.key_pem.decode(),
            node_key=node.private_openssh.decode(), contract=self.contract_json(),
            he_secret_context=base64.b64encode(he_secret_context).decode() if he_secret_context else "")
        return bundle, credential

    @staticmethod
    def _write(out: Path, bundle: SiteBundle) -> None:
        """Write the bundle inside the caller's transaction; removed again if the commit fails."""
        try:
            write_bundle(out, bundle)
        except OSError as exc:
            raise StateError(f"cannot write the bundle {out}: {exc.strerror or exc}; nothing was registered") from exc
