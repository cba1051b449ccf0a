"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain (:mod:`lifecycle.audit.chain`) detects an edited, deleted or
reordered event, but not an administrator who rewrites an event *and
recomputes every later hash*: the rewritten chain verifies. A checkpoint
closes that gap. Every ``audit-checkpoint-every`` events (and on ``fedguard
audit checkpoint``) the registry signs ``(last event id, its hash, number of
events)`` with the coordinator's **audit key**, an Ed25519 key (Bernstein et
al. 2012, "High-speed high-security signatures"; RFC 8032) kept apart from the
model-signing key so that the two duties can sit with different people, and
appends the signed statement to ``FEDGUARD_HOME/audit/checkpoints.jsonl``, an
append-only JSON-lines file outside the database. A rewritten history no
longer matches the hash a checkpoint signed for, and a forged checkpoint does
not verify against the audit public key. This is the signed tree head of
Certificate Transparency (RFC 6962 §3.5) applied to a linear chain; copies of
the file held by others (witnesses) make it trustworthy even against the
holder of the audit key, who could otherwise re-sign a rewritten file.

:func:`verify` is what ``fedguard audit verify`` runs; it raises
:class:`~lifecycle.audit.chain.AuditChainError` (exit code 5) naming the first
event or checkpoint that does not verify.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func
from sqlmodel import Session, col, select

from lifecycle.audit.chain import AuditChainError, verify_chain
from lifecycle.errors import StateError
from lifecycle.home import write_private
from lifecycle.registry.tables import AuditEvent

PRIVATE_KEY_NAME = "audit-key.pem"
PUBLIC_KEY_NAME = "audit-key.pub.pem"
CHECKPOINTS_NAME = "checkpoints.jsonl"
FORMAT = 1


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how a checkpoint names the key that signed it."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class AuditKey:
    """The coordinator's Ed25519 audit key (``keys/audit-key.pem``, 0600) and its public half."""

    private: Ed25519PrivateKey

    @classmethod
    def ensure(cls, keys_dir: Path) -> AuditKey:
        """The key in ``keys_dir``, generated on first use (the public half beside it, for verifiers)."""
        path = keys_dir / PRIVATE_KEY_NAME
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise StateError(f"cannot read the audit key {path}: {exc}; restore it from a backup") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise StateError(f"{path} is not an Ed25519 key; restore the audit key from a backup")
            return cls(key)
        keys_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        (keys_dir / PUBLIC_KEY_NAME).write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return cls(key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.private.public_key())

    def sign(self, statement: Checkpoint) -> str:
        return base64.b64encode(self.private.sign(statement.canonical())).decode()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The audit public key a verifier was given (PEM)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise StateError(f"no audit public key at {path}: pass --public-key, or write a checkpoint first "
                         "('fedguard audit checkpoint')") from None
    except ValueError as exc:
        raise StateError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise StateError(f"{path} is not an Ed25519 public key (the audit key is Ed25519)")
    return key


@dataclass(frozen=True)
class Checkpoint:
    """What the audit key signs: the chain had ``events`` events, the last one ``event_id`` with ``hash``."""

    event_id: int
    hash: str
    events: int
    at: str
    key: str
    format: int = FORMAT

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Signed:
    """One line of the checkpoint file."""

    checkpoint: Checkpoint
    signature: str

    def line(self) -> str:
        return json.dumps({"checkpoint": asdict(self.checkpoint), "signature": self.signature}, sort_keys=True)

    @classmethod
    def parse(cls, text: str, where: str) -> Signed:
        try:
            data = json.loads(text)
            return cls(Checkpoint(**data["checkpoint"]), str(data["signature"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditChainError(f"{where} is not a checkpoint ({exc}); the checkpoint file was damaged: "
                                  "compare it with a witness's copy") from None

    def verifies(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), self.checkpoint.canonical())
        except (InvalidSignature, ValueError):
            return False
        return True


class CheckpointLog:
    """The append-only JSON-lines file of signed checkpoints (appends are serialised by a file lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> list[Signed]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [Signed.parse(text, f"{self.path} line {n}") for n, text in enumerate(lines, 1) if text.strip()]

    def last(self) -> Signed | None:
        """The newest checkpoint (only the last line is parsed: what the coordinator sends its witnesses)."""
        if not self.path.exists():
            return None
        lines = [text for text in self.path.read_text(encoding="utf-8").splitlines() if text.strip()]
        return Signed.parse(lines[-1], f"{self.path} line {len(lines)}") if lines else None

    def append_if(self, make: Callable[[Signed | None], Signed | None]) -> Signed | None:
        """Under the lock: ``make(last)`` builds the next checkpoint (or ``None``), which is appended and synced."""
        with self._locked():
            entries = self.read()
            signed = make(entries[-1] if entries else None)
            if signed is not None:
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write(signed.line() + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            return signed


def _head(session: Session) -> tuple[int, int, str] | None:
    """``(events, last id, last hash)`` of the chain, or ``None`` when it is empty."""
    count = session.exec(select(func.count()).select_from(AuditEvent)).one()
    last = session.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(1)).first()
    if last is None or last.id is None:
        return None
    return int(count), last.id, last.hash


def due(session: Session, log: CheckpointLog, every: int) -> bool:
    """Whether ``every`` or more events came after the last checkpoint (read without the lock: a hint)."""
    head = _head(session)
    if head is None:
        return False
    entries = log.read()
    return head[0] - (entries[-1].checkpoint.events if entries else 0) >= max(every, 1)


def write(session: Session, key: AuditKey, log: CheckpointLog, *, every: int = 1) -> Signed | None:
    """Sign the chain's head if ``every`` or more events came after the last checkpoint; the new line or None."""

    def make(last: Signed | None) -> Signed | None:
        head = _head(session)
        if head is None:
            return None
        events, event_id, event_hash = head
        if events - (last.checkpoint.events if last is not None else 0) < max(every, 1):
            return None
        statement = Checkpoint(event_id=event_id, hash=event_hash, events=events,
                               at=datetime.now(UTC).isoformat(timespec="seconds"), key=key.fingerprint)
        return Signed(statement, key.sign(statement))

    return log.append_if(make)


@dataclass(frozen=True)
class Verified:
    """What ``fedguard audit verify`` found."""

    events: int
    checkpoints: int
    last_checkpoint: dict[str, Any] | None
    key: str


def verify(session: Session, log: CheckpointLog, public_key: Ed25519PublicKey) -> Verified:
    """The chain, every checkpoint's signature, and that the database still holds what each checkpoint signed.

    Raises
    ------
    AuditChainError
        Naming the first event or checkpoint that does not verify.
    """
    events = verify_chain(session)
    expected = fingerprint(public_key)
    entries = log.read()
    previous = 0
    for n, entry in enumerate(entries, 1):
        cp = entry.checkpoint
        where = f"checkpoint {n} (event {cp.event_id}, signed {cp.at})"
        if cp.key != expected or not entry.verifies(public_key):
            raise AuditChainError(f"{where} is not signed by the audit key {expected[:16]}: the checkpoint file "
                                  "was altered; compare it with a witness's copy")
        if cp.events < previous:
            raise AuditChainError(f"{where} counts fewer events than the one before it: the checkpoint file was "
                                  "reordered or altered")
        previous = cp.events
        row = session.get(AuditEvent, cp.event_id)
        if row is None:
            raise AuditChainError(f"{where}: the registry no longer holds event {cp.event_id}: events were "
                                  "deleted after they were checkpointed; restore the registry from a backup")
        before = session.exec(select(func.count()).select_from(AuditEvent)
                              .where(col(AuditEvent.id) <= cp.event_id)).one()
        if row.hash != cp.hash or int(before) != cp.events:
            raise AuditChainError(f"{where}: the registry's history up to event {cp.event_id} is not the one "
                                  "that was signed (rewritten and rehashed); restore the registry from a backup")
    last = asdict(entries[-1].checkpoint) if entries else None
    return Verified(events, len(entries), last, expected)
