"""An operator's approver key: the Ed25519 key that signs approvals and overrides.

An approval must be attributable to one person and impossible for them to
deny later (non-repudiation), and verifiable by anyone outside fedguard. A
signature by a key only that person holds gives both; an Ed25519 key
(RFC 8032; Bernstein et al. 2012) is small, fast and deterministic (no
per-signature randomness to get wrong). The private key stays in the
operator's own files (``$FEDGUARD_OPERATOR_KEY`` or
``~/.config/fedguard/approver-key.pem``, mode 0600), never in the registry;
the registry keeps the public key beside each signed statement.

A key is named by its **fingerprint**: the SHA-256 of the raw 32-byte public
key, in hex (the same rule as the audit key's, :mod:`lifecycle.audit.checkpoints`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifecycle.audit import actors
from lifecycle.audit.checkpoints import fingerprint
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.home import write_private

KEY_ENV = "FEDGUARD_OPERATOR_KEY"
"""The environment variable naming the approver key's path."""
MAX_NAME = 128


def default_key_path() -> Path:
    """``$FEDGUARD_OPERATOR_KEY``, else ``~/.config/fedguard/approver-key.pem``."""
    given = os.environ.get(KEY_ENV)
    if given:
        return Path(given).expanduser()
    return Path.home() / ".config" / "fedguard" / "approver-key.pem"


def public_path(path: Path) -> Path:
    """Where the public half of the key at ``path`` is written (``approver-key.pub.pem``)."""
    return path.with_name(path.name.removesuffix(".pem") + ".pub.pem")


def identity_path(path: Path) -> Path:
    """Where the key holder's display name is kept (``approver-key.json``; not secret, not signed)."""
    return path.with_name(path.name.removesuffix(".pem") + ".json")


def os_actor() -> str:
    """Who runs the command, as the audit trail names them (``user:<OS user>``, :mod:`lifecycle.audit.actors`)."""
    return actors.actor()


@dataclass(frozen=True)
class ApproverKey:
    """An operator's Ed25519 approver key and the name it signs under."""

    private: Ed25519PrivateKey
    name: str = ""
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, hex: how approvals name their approver."""
        return fingerprint(self.private.public_key())

    @property
    def public_pem(self) -> str:
        """The public key as PEM (SubjectPublicKeyInfo): what a verifier needs, and all it needs."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message`` (64 bytes; deterministic, RFC 8032 §5.1.6)."""
        return self.private.sign(message)

    def actor(self, user: str | None = None) -> str:
        """The audit identity of an action signed with this key: the OS user plus the key's fingerprint."""
        return str(actors.approver(self.fingerprint, user or actors.current_user().name))

    @classmethod
    def generate(cls, name: str = "") -> ApproverKey:
        """A fresh key (tests; :func:`init_key` writes one to disk)."""
        return cls(Ed25519PrivateKey.generate(), _clean_name(name))


def _clean_name(name: str) -> str:
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    if len(cleaned) > MAX_NAME:
        raise ConfigurationError(f"approver name is {len(cleaned)} characters long; use at most {MAX_NAME}")
    return cleaned


def init_key(path: Path | None = None, *, name: str = "", force: bool = False) -> ApproverKey:
    """Create an approver key at ``path`` (0600), its public half and identity beside it.

    Raises
    ------
    ConfigurationError
        A key exists at ``path`` and ``force`` is false (overwriting it would
        orphan every approval it signed), or the name is too long.
    """
    path = path or default_key_path()
    if path.exists() and not force:
        raise ConfigurationError(
            f"an approver key already exists at {path}; approvals it signed stay verifiable only with its public "
            "key. Keep it, choose another --key PATH, or pass --force to replace it"
        )
    key = ApproverKey.generate(name)
    try:
        write_private(path, key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        public_path(path).write_text(key.public_pem)
        identity_path(path).write_text(json.dumps({"name": key.name, "fingerprint": key.fingerprint},
                                                  sort_keys=True) + "\n")
    except OSError as exc:
        raise StateError(f"cannot write the approver key {path}: {exc}; choose a writable --key PATH") from exc
    return ApproverKey(key.private, key.name, path)


def load_key(path: Path | None = None) -> ApproverKey:
    """The approver key at ``path`` (default :func:`default_key_path`), with its holder's name.

    Raises
    ------
    NotFoundError
        No key there: create one with ``fedguard operator init``.
    StateError
        The file is readable by others than its owner, or is not an Ed25519
        private key.
    """
    path = path or default_key_path()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no approver key at {path}; create one with 'fedguard operator init' "
                            f"(or point --key / {KEY_ENV} at yours)") from None
    except OSError as exc:
        raise StateError(f"cannot read the approver key {path}: {exc}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise StateError(f"the approver key {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                         f"anyone who can read it can sign as you: run 'chmod 600 {path}'")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StateError(f"{path} is not a readable approver key ({exc}); create one with 'fedguard operator "
                         "init --force'") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise StateError(f"{path} is not an Ed25519 key; approver keys are Ed25519 ('fedguard operator init')")
    return ApproverKey(private, _read_name(path), path)


def _read_name(path: Path) -> str:
    try:
        data = json.loads(identity_path(path).read_text())
    except (OSError, ValueError):
        return ""
    return _clean_name(str(data.get("name", ""))) if isinstance(data, dict) else ""
