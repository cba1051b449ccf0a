"""Who did it: actors of the audit trail as identities, never free strings.

An audit event, a deployment event or a gate decision names its actor in a
128-character column. A free string there ("cli", "coordinator") says little
and proves nothing; an :class:`Identity` says what kind of actor it was and,
where a key stands behind it, which key::

    user:alice                                  an operator, by OS user name
    approver:alice/ed25519:3fa4c2d1e0b9a8f7     an approver, by the fingerprint of their Ed25519 key
    site:st-marys/key:ab12cd34ef56a7b8          a site, by the fingerprint of its enrolled node key
    service:serve                               a fedguard process acting on its own (serving, coordinator)

The fingerprint is the first 16 hex digits (64 bits) of the key's SHA-256
fingerprint: enough to pick the key out of the registry's approval and site
credential rows, which hold it whole, and short enough that the whole
identity fits the column. :meth:`Identity.parse` reads the canonical form back
and also the free strings written before identities existed (``cli:alice``,
``coordinator``, ``serve``, ``apikey:K``): those come back with
``kind="legacy"``, unchanged, and :meth:`Identity.resolved` says what they
most likely meant. Old audit rows are never rewritten (that would break the
hash chain, and rightly so).

Notes
-----
A key fingerprint identifies a key, not a person; it is the person's
signature with that key (an approval, RFC 8032 Ed25519) that gives
non-repudiation. The identity here only names which key to check.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from typing import Final

USER: Final = "user"
APPROVER: Final = "approver"
SITE: Final = "site"
SERVICE: Final = "service"
LEGACY: Final = "legacy"
KINDS: tuple[str, ...] = (USER, APPROVER, SITE, SERVICE)
"""The kinds of a canonical identity (``legacy`` is only what :meth:`Identity.parse` says of old strings)."""

MAX_LENGTH = 128
"""The width of every ``actor`` column."""
FINGERPRINT_HEX = 16
"""Hex digits of a key fingerprint kept in an identity (64 bits of its SHA-256)."""
MAX_NAME = 64

_SCHEMES: dict[str, str] = {APPROVER: "ed25519", SITE: "key"}
"""The label before an identity's fingerprint, by kind (what kind of key it is)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")
_HEX = re.compile(r"^[0-9a-f]{16}$")
_SERVICES = ("coordinator", "serve", "serving", "client")
"""Legacy actor strings that were a fedguard process acting on its own."""


@dataclass(frozen=True)
class Identity:
    """An actor as recorded in the audit trail: a kind, a name and, for keyed actors, a key fingerprint."""

    kind: str
    name: str
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.kind == LEGACY:
            if not 0 < len(self.name) <= MAX_LENGTH or self.fingerprint:
                raise ValueError(f"a legacy actor is 1-{MAX_LENGTH} characters without a fingerprint")
            return
        if self.kind not in KINDS:
            raise ValueError(f"unknown actor kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not _NAME.match(self.name):
            raise ValueError(f"invalid actor name {self.name[:MAX_NAME]!r}: use 1-{MAX_NAME} letters, digits, "
                             "'.', '_', '@', '+' or '-'")
        if self.kind in _SCHEMES and not _HEX.match(self.fingerprint):
            raise ValueError(f"a {self.kind} identity needs its key fingerprint ({FINGERPRINT_HEX} lowercase hex)")
        if self.kind not in _SCHEMES and self.fingerprint:
            raise ValueError(f"a {self.kind} identity has no key fingerprint")

    def __str__(self) -> str:
        """The canonical form stored in ``actor`` columns (at most :data:`MAX_LENGTH` characters)."""
        if self.kind == LEGACY:
            return self.name
        text = f"{self.kind}:{self.name}"
        return f"{text}/{_SCHEMES[self.kind]}:{self.fingerprint}" if self.fingerprint else text

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Read an ``actor`` column back: a canonical identity, or ``kind="legacy"`` for anything else.

        Never raises for a string that fits the column: an audit trail written
        before identities existed must still be readable.
        """
        text = text[:MAX_LENGTH] or "unknown"
        kind, sep, rest = text.partition(":")
        if sep and kind in KINDS:
            name, slash, keyed = rest.partition("/")
            scheme, colon, fingerprint = keyed.partition(":")
            try:
                if not slash:
                    return cls(kind, name)
                if colon and scheme == _SCHEMES.get(kind):
                    return cls(kind, name, fingerprint)
            except ValueError:
                pass
        return cls(LEGACY, text)

    def resolved(self) -> Identity:
        """What a legacy string most likely meant (``cli:alice`` → ``user:alice``); a canonical one unchanged."""
        if self.kind != LEGACY:
            return self
        head, _, rest = self.name.partition(":")
        if head == "cli":
            return user(rest) if rest else Identity(USER, "unknown")
        if head in _SERVICES:
            return service(_safe(self.name.replace(":", "-")))
        return self

    def matches(self, fingerprint: str) -> bool:
        """Whether ``fingerprint`` (a whole SHA-256 hex fingerprint) is this identity's key."""
        return bool(self.fingerprint) and fingerprint.lower().startswith(self.fingerprint)

    def describe(self) -> str:
        """The identity in plain words, for people who do not read ``kind:name`` strings."""
        if self.kind == USER:
            return f"operator {self.name} (computer account)"
        if self.kind == APPROVER:
            return f"approver {self.name} (signing key {self.fingerprint})"
        if self.kind == SITE:
            return f"site {self.name} (enrolled key {self.fingerprint})"
        if self.kind == SERVICE:
            return f"fedguard service '{self.name}' (automatic)"
        guess = self.resolved()
        if guess is not self:
            return f"{guess.describe()}, recorded as '{self.name}' before identities were kept"
        if self.name.startswith("apikey:"):
            return f"holder of admin API key {self.name.partition(':')[2]}"
        return f"'{self.name}' (recorded before identities were kept)"


def _safe(name: str) -> str:
    """``name`` made valid for an identity: unsafe characters become '_', cut to :data:`MAX_NAME`."""
    cleaned = _UNSAFE.sub("_", name)[:MAX_NAME]
    return cleaned if _NAME.match(cleaned) else f"x{cleaned}"[:MAX_NAME]


def _short(fingerprint: str) -> str:
    return fingerprint.lower()[:FINGERPRINT_HEX]


def user(name: str) -> Identity:
    r"""An operator by OS user name (unsafe characters replaced, so ``DOMAIN\bob`` is ``DOMAIN_bob``)."""
    return Identity(USER, _safe(name))


def current_user() -> Identity:
    """The operator running this process, from the OS (``user:uid-1000`` when the OS has no name for them)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):  # containers run as a uid without a passwd entry
        name = ""
    return user(name) if name else Identity(USER, f"uid-{os.getuid()}")


def approver(fingerprint: str, name: str | None = None) -> Identity:
    """An approver by their Ed25519 key's SHA-256 fingerprint (named after the OS user unless ``name`` is given)."""
    return Identity(APPROVER, _safe(name) if name else current_user().name, _short(fingerprint))


def site(name: str, fingerprint: str) -> Identity:
    """A site by its enrolled name and its node key's fingerprint."""
    return Identity(SITE, _safe(name), _short(fingerprint))


def service(name: str) -> Identity:
    """A fedguard process acting on its own (``serve``, ``coordinator``, a guard)."""
    return Identity(SERVICE, _safe(name))


def actor() -> str:
    """The ``actor`` string of a command run by an operator: ``str(current_user())``."""
    return str(current_user())
