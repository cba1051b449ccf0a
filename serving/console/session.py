"""Console sessions: sign in once with an API key, then a signed, HttpOnly, SameSite=Strict cookie.

The cookie holds ``base64url(JSON) "." base64url(HMAC-SHA256)``: the key id,
its scope, a random session id and the expiry. It is signed, not encrypted:
it carries nothing secret (the API key itself is never stored, only its id),
and the HMAC makes it unforgeable. Every request re-reads the key's row, so
revoking the key (``fedguard keys revoke``) or its expiry ends the session
at once, and a key that lost its scope cannot keep a session's.

Each state-changing form carries a CSRF token: the HMAC of the session id
under the same secret (a synchronizer token bound to the session, so a token
from one session is worthless in another), compared in constant time.
A POST whose ``Origin`` (or, without one, ``Referer``) names another origin
is refused before the token is even read.

Notes
-----
The defences follow the OWASP Cross-Site Request Forgery Prevention Cheat
Sheet (synchronizer token pattern; verifying the origin with standard
headers; SameSite cookies as defence in depth) and RFC 6265bis §8.8 for
``SameSite=Strict``. HMAC-SHA256 (RFC 2104) signs the cookie; the secret is
``FEDGUARD_SERVE_CONSOLE_SECRET`` or 32 random bytes per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlmodel import Session, select

from lifecycle.errors import AuthError
from lifecycle.registry import Registry
from lifecycle.registry.tables import ApiKey

COOKIE = "fedguard_console"
VIEWER = "viewer"
ADMIN = "admin"


class ConsoleAuthError(AuthError):
    """No session, a tampered or expired cookie, or a key revoked since sign-in (sign in again)."""


class CsrfError(AuthError):
    """A state-changing request without a valid CSRF token, or from another origin (HTTP 403)."""


@dataclass(frozen=True)
class Operator:
    """Who is signed in: the key id (their identity in the audit trail), its name and scope."""

    key_id: str
    name: str
    scope: str
    session_id: str
    expires: float

    @property
    def actor(self) -> str:
        """The audit trail's actor for what this operator does (as the admin API routes write it)."""
        return f"apikey:{self.key_id}"

    @property
    def is_admin(self) -> bool:
        return self.scope == ADMIN


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies and CSRF tokens under one secret."""

    def __init__(self, registry: Registry, secret: bytes | None, lifetime_seconds: float) -> None:
        self.registry = registry
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.lifetime = lifetime_seconds

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\x00" + data, hashlib.sha256).digest()

    def issue(self, key_id: str, name: str, scope: str, now: float) -> str:
        """A new session cookie value for an authenticated key."""
        payload = json.dumps({"k": key_id, "n": name, "s": scope, "i": secrets.token_urlsafe(16),
                              "e": now + self.lifetime}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}"

    def check(self, cookie: str | None, now: float) -> Operator:
        """The operator of a cookie, after its signature, expiry and key (still valid, same scope) check out.

        Raises
        ------
        ConsoleAuthError
            Anything wrong: the caller sends the operator to the sign-in page.
        """
        if not cookie or cookie.count(".") != 1:
            raise ConsoleAuthError("no console session")
        body, mac = cookie.split(".")
        try:
            payload = _unb64(body)
            good = hmac.compare_digest(_unb64(mac), self._mac(b"session", payload))
            data = json.loads(payload) if good else None
        except (ValueError, TypeError) as exc:
            raise ConsoleAuthError("malformed console session cookie") from exc
        if not isinstance(data, dict):
            raise ConsoleAuthError("console session cookie with a bad signature")
        operator = Operator(str(data["k"]), str(data["n"]), str(data["s"]), str(data["i"]), float(data["e"]))
        if now >= operator.expires:
            raise ConsoleAuthError(f"console session of key {operator.key_id} expired")
        self._check_key(operator, now)
        return operator

    def _check_key(self, operator: Operator, now: float) -> None:
        with Session(self.registry.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_id == operator.key_id)).first()
        if row is None or row.revoked or row.scope != operator.scope:
            raise ConsoleAuthError(f"API key {operator.key_id} was revoked or changed since sign-in")
        if row.expires_at is not None:
            expires = row.expires_at.replace(tzinfo=UTC) if row.expires_at.tzinfo is None else row.expires_at
            if datetime.fromtimestamp(now, UTC) >= expires:
                raise ConsoleAuthError(f"API key {operator.key_id} expired")

    def csrf_token(self, operator: Operator) -> str:
        """The form token of ``operator``'s session."""
        return _b64(self._mac(b"csrf", operator.session_id.encode()))

    def check_csrf(self, operator: Operator, presented: str | None) -> None:
        """Raise :class:`CsrfError` unless ``presented`` is this session's token."""
        if not presented or not hmac.compare_digest(presented.encode(), self.csrf_token(operator).encode()):
            raise CsrfError("missing or wrong CSRF token; reload the page and submit the form again")


def check_origin(origin: str | None, referer: str | None, own: str) -> None:
    """Refuse a state-changing request whose ``Origin`` (else ``Referer``) is not ``own`` (``scheme://host``).

    A request with neither header passes this check (some privacy settings
    strip both); its CSRF token and the SameSite=Strict cookie still guard it.

    Raises
    ------
    CsrfError
        The request came from another origin.
    """
    claimed = origin if origin and origin != "null" else None
    if claimed is None and referer:
        parts = urlsplit(referer)
        claimed = f"{parts.scheme}://{parts.netloc}"
    if claimed is None and origin == "null":
        raise CsrfError("cross-site request refused (Origin: null)")
    if claimed is not None and claimed.rstrip("/").lower() != own.rstrip("/").lower():
        raise CsrfError(f"cross-site request from {claimed[:100]} refused")
