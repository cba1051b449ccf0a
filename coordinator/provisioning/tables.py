"""Persisted site-registry types (SQLModel tables, Alembic revision ``0005``).

A :class:`FederationSite` is a site's identity and standing (``active`` or
``revoked``, for good); a :class:`SiteCredential` is one issue of its
credentials (a client certificate and a SuperNode node key). Rotation adds a
credential and revokes the previous one; revocation revokes the site and all of
its credentials. Revoked serials never disappear: they feed the CRL.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from lifecycle.registry.tables import utcnow

ACTIVE = "active"
REVOKED = "revoked"
ROTATED = "rotated"
"""``SiteCredential.revoked_reason`` of a credential replaced by ``fedguard site rotate``."""


class FederationSite(SQLModel, table=True):
    """One enrolled site."""

    __tablename__ = "federation_site"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    status: str = Field(default=ACTIVE, max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class SiteCredential(SQLModel, table=True):
    """One issue of a site's credentials; only the public halves are stored."""

    __tablename__ = "site_credential"

    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="federation_site.id", index=True)
    cert_serial: str = Field(unique=True, max_length=64)
    cert_fingerprint: str = Field(max_length=64)
    node_public_key: str
    node_key_fingerprint: str = Field(max_length=64)
    status: str = Field(default=ACTIVE, max_length=16)
    issued_at: datetime = Field(default_factory=utcnow)
    not_after: datetime
    revoked_at: datetime | None = None
    revoked_reason: str = Field(default="", max_length=64)
