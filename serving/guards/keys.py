"""API keys of the serving tier: shown once, stored as a hash, checked in constant time.

A key reads ``fgk_<key_id>_<secret>``. The ``key_id`` (16 hex digits) is public:
it indexes the ``api_key`` row, names the key in logs and audit events, and is
what ``fedguard keys revoke`` takes. The ``secret`` (32 random bytes,
URL-safe base64) never touches the database: only its SHA-256 does, so a copy
of the registry grants no access. Creation and revocation write their audit
event in the same transaction as the row (DESIGN.md §6).

A key may carry an expiry (``expires_at``, UTC); from that instant on it is
refused exactly like a revoked one: the caller sees the same generic 401, and
only the operator log says "expired". Expiry is checked against an injected
clock (``now=``), so tests never sleep.

Scopes are ordered: ``admin`` implies ``predict`` and ``viewer``. A ``viewer``
key (compliance staff) may only read the operator console (:mod:`serving.console`):
it can neither predict nor change anything. A key lacking the scope a
route needs is *authenticated but forbidden* (HTTP 403), which is a different
answer from *unknown* (HTTP 401).

Notes
-----
A fast hash is enough here, unlike for passwords: slow hashes (bcrypt, scrypt,
Argon2) protect low-entropy human secrets against offline guessing, while a
256-bit secret from a CSPRNG cannot be guessed whatever the hash speed (NIST SP
800-63B §5.1.2 treats such look-up secrets the same way). The stored digest is
compared with :func:`hmac.compare_digest` so the comparison time does not leak
how many leading characters matched, and an unknown ``key_id`` still costs one
comparison so that it answers in about the same time as a wrong secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import AuthError, ConfigurationError, NotFoundError, StateError
from lifecycle.registry import Registry
from lifecycle.registry.tables import ApiKey

PREFIX = "fgk_"
SCOPES: tuple[str, ...] = ("predict", "admin", "viewer")
_IMPLIED: dict[str, frozenset[str]] = {
    "predict": frozenset({"predict"}),
    "admin": frozenset({"predict", "admin", "viewer"}),
    "viewer": frozenset({"viewer"}),
}
_KEY = re.compile(r"fgk_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})")
KEY_PATTERN = _KEY  # a whole key: groups (key_id, secret)
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_DUMMY_HASH = hashlib.sha256(b"fedguard-no-such-key").hexdigest()
MAX_NAME = 128
_DURATION = re.compile(r"([0-9]{1,6})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
MAX_EXPIRES_IN = timedelta(days=3650)


class AuthenticationError(AuthError):
    """No key, a malformed key, an unknown or revoked key, or a wrong secret (HTTP 401).

    The message is for the operator's log; callers only ever see a generic one,
    so a prober cannot tell an unknown key from a revoked one.
    """


class ScopeError(AuthError):
    """A valid key lacks the scope the action needs (HTTP 403)."""

    def __init__(self, message: str, *, required: str) -> None:
        super().__init__(message)
        self.required = required


@dataclass(frozen=True)
class KeyInfo:
    """What may be known about a key without its secret."""

    key_id: str
    scope: str
    name: str
    revoked: bool
    created_at: datetime
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """Whether the key has expired at ``now`` (a key without expiry never does)."""
        return self.expires_at is not None and now >= self.expires_at

    def allows(self, scope: str) -> bool:
        """Whether this key's scope covers ``scope`` (``admin`` implies ``predict`` and ``viewer``)."""
        return scope in _IMPLIED.get(self.scope, frozenset())


@dataclass(frozen=True)
class CreatedKey:
    """A freshly created key: the only moment its plaintext exists.

    ``key`` is excluded from ``repr`` so that a log line or a traceback showing
    this object does not leak it.
    """

    info: KeyInfo
    key: str = field(repr=False)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's secret part (what the ``api_key`` table stores)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC ones)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _info(row: ApiKey) -> KeyInfo:
    expires_at = _aware(row.expires_at) if row.expires_at is not None else None
    return KeyInfo(row.key_id, row.scope, row.name, row.revoked, row.created_at, expires_at)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a :class:`~datetime.timedelta`.

    Raises
    ------
    ConfigurationError
        Not a positive whole number followed by ``d``, ``h`` or ``m``, or
        longer than ten years.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigurationError(
            f"cannot read the duration {text!r}: use a positive whole number followed by "
            "'d' (days), 'h' (hours) or 'm' (minutes), e.g. 30d, 12h or 90m"
        )
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if delta > MAX_EXPIRES_IN:
        raise ConfigurationError(f"the duration {text!r} is over ten years; use at most 3650d")
    return delta


def is_key_id(value: str) -> bool:
    """Whether ``value`` is a bare key id (16 lowercase hex digits)."""
    return _KEY_ID.fullmatch(value) is not None


def key_id_of(value: str) -> str:
    """The key id in ``value``, which may be a key id or a whole key.

    Raises
    ------
    ConfigurationError
        ``value`` is neither.
    """
    match = _KEY.fullmatch(value)
    if match:
        return match.group(1)
    if _KEY_ID.fullmatch(value):
        return value
    raise ConfigurationError(
        "not an API key id: expected 16 hex digits (the part after 'fgk_'); see 'fedguard keys list'"
    )


def create_key(
    registry: Registry,
    scope: str,
    name: str = "",
    *,
    actor: str = "cli",
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> CreatedKey:
    """Create a key with ``scope``; return it in plaintext, once.

    Parameters
    ----------
    expires_in
        Lifetime of the key from ``now``; ``None`` (the default): it never expires.
    now
        The creation instant (aware); defaults to the current UTC time.

    Raises
    ------
    ConfigurationError
        Unknown scope, a name over 128 characters, or ``expires_in`` not positive.
    """
    if scope not in SCOPES:
        raise ConfigurationError(f"unknown scope '{scope}'; use one of: {', '.join(SCOPES)}")
    if len(name) > MAX_NAME:
        raise ConfigurationError(f"key name is {len(name)} characters long; use at most {MAX_NAME}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ConfigurationError("a key's lifetime must be positive; omit it for a key that never expires")
    created_at = _aware(now) if now is not None else datetime.now(UTC)
    expires_at = created_at + expires_in if expires_in is not None else None
    details: dict[str, str] = {"scope": scope, "name": name}
    if expires_at is not None:
        details["expires_at"] = expires_at.isoformat()
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with registry.transaction() as session:
        row = ApiKey(key_id=key_id, key_hash=hash_secret(secret), scope=scope, name=name,
                     created_at=created_at, expires_at=expires_at)
        session.add(row)
        audit.record(session, "apikey.created", actor=actor, subject=key_id, details=details)
    return CreatedKey(info=_info(row), key=f"{PREFIX}{key_id}_{secret}")


def revoke_key(registry: Registry, key_id: str, *, actor: str = "cli") -> KeyInfo:
    """Revoke a key from now on (idempotent: revoking twice records one event).

    Raises
    ------
    NotFoundError
        No key has this id.
    """
    key_id = key_id_of(key_id)
    with registry.transaction() as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key with id '{key_id}'; see 'fedguard keys list'")
        if not row.revoked:
            row.revoked = True
            session.add(row)
            audit.record(session, "apikey.revoked", actor=actor, subject=key_id, details={"scope": row.scope})
    return _info(row)


def list_keys(registry: Registry) -> list[KeyInfo]:
    """Every key, oldest first, without any secret or hash."""
    with Session(registry.engine) as session:
        return [_info(row) for row in session.exec(select(ApiKey).order_by(col(ApiKey.id))).all()]


def authenticate(registry: Registry, presented: str | None, *, now: datetime | None = None) -> KeyInfo:
    """Return the key ``presented`` belongs to, if it is known, intact, not revoked and not expired.

    Parameters
    ----------
    now
        The instant to check expiry against (aware); defaults to the current UTC time.

    Raises
    ------
    AuthenticationError
        Missing, malformed, unknown, wrong secret, revoked or expired (the
        message says which, for the log).
    StateError
        The registry cannot be read.
    """
    if not presented:
        raise AuthenticationError("no API key presented")
    match = _KEY.fullmatch(presented)
    if match is None:
        raise AuthenticationError("malformed API key (expected fgk_<key_id>_<secret>)")
    key_id, secret = match.groups()
    try:
        with Session(registry.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    except SQLAlchemyError as exc:
        raise StateError(f"cannot read API keys from the registry: {exc}") from exc
    matches = hmac.compare_digest(hash_secret(secret), row.key_hash if row is not None else _DUMMY_HASH)
    if row is None or not matches:
        raise AuthenticationError(f"unknown API key id {key_id} or wrong secret")
    if row.revoked:
        raise AuthenticationError(f"API key {key_id} is revoked")
    info = _info(row)
    when = _aware(now) if now is not None else datetime.now(UTC)
    if info.expired(when):
        expires_at = info.expires_at.isoformat() if info.expires_at else "?"
        raise AuthenticationError(f"API key {key_id} expired at {expires_at}")
    return info


def require_scope(info: KeyInfo, scope: str) -> KeyInfo:
    """Return ``info`` if it allows ``scope``.

    Raises
    ------
    ScopeError
        The key is valid but its scope does not cover ``scope``.
    """
    if not info.allows(scope):
        raise ScopeError(f"API key {info.key_id} has scope '{info.scope}', not '{scope}'", required=scope)
    return info
