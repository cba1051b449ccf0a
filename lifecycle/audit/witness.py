"""Sites as witnesses of the audit chain: the checkpoints they keep, and the registry checked against them.

A signed checkpoint (:mod:`lifecycle.audit.checkpoints`) catches a history
rewritten and rehashed by someone *without* the audit key. Whoever controls
the coordinator holds that key, and can rewrite the database, delete
``checkpoints.jsonl`` and sign a fresh series that matches the new history.
What defeats them is a copy of the old checkpoints held by somebody else:
the sites. The coordinator puts its newest checkpoint, with the audit public
key, into the instructions it already sends every round
(:class:`federation.protocol.WitnessCheckpoint`); each site appends every new
one to its own append-only **witness file** (:class:`WitnessLog`, beside its
audit log) and notes it in its audit log. An auditor then runs ``fedguard
audit verify --witness FILE``: each witnessed checkpoint must verify under
the audit key, and the registry must still hold, at the position the
checkpoint names, an event with exactly the hash it signed
(:func:`verify_witness`). A rewritten history cannot satisfy both: the
rewriter would have to rewrite every site's file too.

A site is a witness, not a judge: it cannot see the coordinator's database,
so it checks only what it can, and records what it could not accept
instead of dropping it (never silently):

- the key: trust on first use (the first checkpoint whose signature verifies
  pins its key, as SSH pins a host key; RFC 4251 §4.1), or a fingerprint the
  site was given (``trusted_key``); a checkpoint under another key is a
  *warning* (``unknown-key``), one whose signature does not verify under the
  key it came with too (``bad-signature``);
- monotony: the coordinator only ever signs a longer chain, so a checkpoint
  counting fewer events than one already witnessed (``backwards``), or a
  different head at the same count (``fork``), is an *alarm*: the
  coordinator rewound or forked its history.

A damaged line in the witness file (a crash in the middle of an append, a
disk error) is skipped and reported with every observation
(:attr:`Observation.damaged`, logged by the site as an alarm), never fatal:
one bad line must not stop a site from witnessing every later checkpoint.
The next append starts on a fresh line, and ``fedguard client witness
--out`` exports the good lines and says how many it skipped.

Notes
-----
This is the gossip and witness-cosigning idea of Certificate Transparency
(RFC 6962 §5.3, RFC 9162 §8.1.4) and of Syta et al. 2016, "Keeping
Authorities 'Honest or Bust' with Decentralized Witness Cosigning" (IEEE
S&P): a log operator who shows different histories to different parties is
caught as soon as two of them compare signed heads. Signatures are the audit
key's Ed25519 (RFC 8032).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func
from sqlmodel import Session, col, select

from lifecycle.audit.chain import AuditChainError
from lifecycle.audit.checkpoints import PUBLIC_KEY_NAME, CheckpointLog, Signed, fingerprint, load_public_key
from lifecycle.errors import StateError
from lifecycle.registry.tables import AuditEvent

WITNESSED = "witnessed"
"""A checkpoint the site accepted: signed by the pinned key, not behind what it witnessed before."""
KNOWN = "known"
"""A checkpoint (or head) the site already holds: nothing is appended."""
MALFORMED = "malformed"
"""The message carried something that is not a checkpoint and a key."""
WARNINGS = {
    "bad-signature": "the checkpoint's signature does not verify under the key it came with",
    "unknown-key": "the checkpoint is signed by another key than the one this site first trusted",
}
"""Statuses of a checkpoint the site could not trust (kept, logged as a warning)."""
ALARMS = {
    "backwards": "the checkpoint counts fewer events than one this site already witnessed",
    "fork": "the checkpoint names another head than the one this site witnessed at the same position",
}
"""Statuses of a checkpoint that contradicts what the site witnessed (kept, logged as an error)."""
WITNESS_SUFFIX = ".witness.jsonl"

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def witness_path(audit_log: Path) -> Path:
    """The witness file beside a site's audit log (``audit.jsonl`` → ``audit.witness.jsonl``)."""
    return audit_log.with_name(audit_log.stem + WITNESS_SUFFIX)


def encode_public_key(key: Ed25519PublicKey) -> str:
    """The raw 32-byte Ed25519 public key, base64: how the key travels to the sites."""
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def decode_public_key(text: str) -> Ed25519PublicKey:
    """The key :func:`encode_public_key` wrote; :class:`ValueError` if ``text`` is not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 Ed25519 public key ({exc})") from None


def newest(keys_dir: Path, log: CheckpointLog) -> tuple[Signed, str] | None:
    """The coordinator's newest signed checkpoint and its audit public key (encoded), or None without either."""
    signed = log.last()
    public = keys_dir / PUBLIC_KEY_NAME
    if signed is None or not public.is_file():
        return None
    return signed, encode_public_key(load_public_key(public))


@dataclass(frozen=True)
class Witnessed:
    """One line of a witness file: the signed checkpoint, the key it came with, what the site made of it.

    A plain line of ``checkpoints.jsonl`` parses too (status ``witnessed``,
    no key): ``audit verify --witness`` accepts either file.
    """

    signed: Signed
    public_key: str = ""
    status: str = WITNESSED
    received_at: str = ""
    detail: str = ""

    @property
    def head(self) -> tuple[int, int, str]:
        """``(events, last event id, its hash)``: what two checkpoints of the same chain must agree on."""
        cp = self.signed.checkpoint
        return cp.events, cp.event_id, cp.hash

    def line(self) -> str:
        return json.dumps({"checkpoint": asdict(self.signed.checkpoint), "signature": self.signed.signature,
                           "public_key": self.public_key, "status": self.status, "received_at": self.received_at,
                           "detail": self.detail}, sort_keys=True)

    @classmethod
    def parse(cls, text: str, where: str) -> Witnessed:
        signed = Signed.parse(text, where)
        data = json.loads(text)
        return cls(signed, str(data.get("public_key", "")), str(data.get("status", WITNESSED)),
                   str(data.get("received_at", "")), str(data.get("detail", "")))


@dataclass(frozen=True)
class Observation:
    """What the site made of one checkpoint it received (``new``: a line was appended)."""

    status: str
    new: bool
    events: int | None = None
    event_id: int | None = None
    hash: str = ""
    detail: str = ""
    damaged: tuple[int, ...] = ()
    """Line numbers of the witness file that do not parse (skipped; the site logs them as an alarm)."""

    @property
    def alarm(self) -> bool:
        return self.status in ALARMS

    @property
    def warning(self) -> bool:
        return self.status in WARNINGS or self.status == MALFORMED

    def summary(self) -> dict[str, Any]:
        """What the site's audit log line keeps of it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "new" and v not in (None, "", ())}


@dataclass
class WitnessLog:
    """A site's append-only witness file (appends under an exclusive lock, each fsynced).

    ``trusted_key``: the audit key's fingerprint the site was given; without
    it the first checkpoint accepted pins its key (trust on first use).
    """

    path: Path
    trusted_key: str | None = None
    now: Clock = field(default=_utcnow)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> list[Witnessed]:
        """Every line, parsed (:class:`~lifecycle.audit.chain.AuditChainError` names a damaged one)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read the witness file {self.path}: {exc.strerror or exc}") from None
        return [Witnessed.parse(text, f"{self.path} line {n}") for n, text in enumerate(lines, 1) if text.strip()]

    def scan(self) -> tuple[list[Witnessed], tuple[int, ...]]:
        """Every line that parses, and the numbers of the damaged ones (skipped: module docstring)."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return [], ()
        except OSError as exc:
            raise StateError(f"cannot read the witness file {self.path}: {exc.strerror or exc}") from None
        entries: list[Witnessed] = []
        damaged: list[int] = []
        for n, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                entries.append(Witnessed.parse(text, f"{self.path} line {n}"))
            except (AuditChainError, ValueError, TypeError, AttributeError):
                damaged.append(n)
        return entries, tuple(damaged)

    def witnessed(self) -> list[Witnessed]:
        return [entry for entry in self.scan()[0] if entry.status == WITNESSED]

    def pinned(self, entries: list[Witnessed]) -> str | None:
        """The key this site trusts: the one it was given, else the key of its first accepted checkpoint."""
        if self.trusted_key:
            return self.trusted_key
        return next((e.signed.checkpoint.key for e in entries if e.status == WITNESSED), None)

    def observe(self, checkpoint: str, public_key: str) -> Observation:
        """Witness one checkpoint line as the coordinator sent it; append it unless already held.

        Never raises for what the coordinator sent: a checkpoint that cannot
        be trusted is recorded with its status (module docstring).
        """
        try:
            signed = Signed.parse(checkpoint, "the checkpoint the coordinator sent")
            key = decode_public_key(public_key)
        except (AuditChainError, ValueError) as exc:
            return Observation(MALFORMED, False, detail=str(exc)[:200])
        cp = signed.checkpoint
        with self._locked():
            entries, damaged = self.scan()
            if any(e.signed == signed for e in entries):
                held = next(e for e in entries if e.signed == signed)
                return Observation(held.status if held.status != WITNESSED else KNOWN, False, cp.events,
                                   cp.event_id, cp.hash, damaged=damaged)
            status = self._judge(signed, key, entries)
            if status == KNOWN:
                return Observation(KNOWN, False, cp.events, cp.event_id, cp.hash, damaged=damaged)
            detail = WARNINGS.get(status) or ALARMS.get(status) or ""
            entry = Witnessed(signed, public_key, status, self.now().isoformat(timespec="seconds"), detail)
            self._append(entry)
        return Observation(status, True, cp.events, cp.event_id, cp.hash, detail, damaged)

    def _judge(self, signed: Signed, key: Ed25519PublicKey, entries: list[Witnessed]) -> str:
        cp = signed.checkpoint
        if cp.key != fingerprint(key) or not signed.verifies(key):
            return "bad-signature"
        pinned = self.pinned(entries)
        if pinned is not None and cp.key != pinned:
            return "unknown-key"
        held = [e for e in entries if e.status == WITNESSED]
        head = (cp.events, cp.event_id, cp.hash)
        if any(e.head == head for e in held):
            return KNOWN  # the same head signed again: nothing new to witness
        if any(e.signed.checkpoint.events > cp.events for e in held):
            return "backwards"
        if any(e.signed.checkpoint.events == cp.events or e.signed.checkpoint.event_id == cp.event_id
               for e in held):
            return "fork"
        return WITNESSED

    def _append(self, entry: Witnessed) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a torn last line: start a fresh one
            with os.fdopen(fd, "a", encoding="utf-8") as out:
                out.write(("\n" if torn else "") + entry.line() + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise StateError(f"cannot append to the witness file {self.path} ({exc.strerror or exc}); fix its "
                             "folder's permissions") from None

    def export(self, out: Path, site: str = "") -> tuple[int, int]:
        """Write the accepted checkpoints to ``out`` (JSON lines) for ``audit verify --witness``.

        Returns their number and the number of damaged lines skipped.
        """
        scanned, damaged = self.scan()
        entries = [entry for entry in scanned if entry.status == WITNESSED]
        lines = []
        for entry in entries:
            data = json.loads(entry.line())
            data.update({"witness": site} if site else {})
            lines.append(json.dumps(data, sort_keys=True))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return len(entries), len(damaged)


@dataclass(frozen=True)
class WitnessVerified:
    """What ``audit verify --witness FILE`` found in one witness file."""

    file: str
    checkpoints: int
    last_checkpoint: dict[str, Any] | None
    alarms: int
    skipped: int
    """Lines the site itself did not trust (another key, a bad signature): not evidence either way."""


def _position(session: Session, event_id: int) -> tuple[AuditEvent | None, int]:
    row = session.get(AuditEvent, event_id)
    before = session.exec(select(func.count()).select_from(AuditEvent).where(col(AuditEvent.id) <= event_id)).one()
    return row, int(before)


def verify_witness(session: Session, path: Path, public_key: Ed25519PublicKey) -> WitnessVerified:
    """Check every checkpoint a witness holds against the audit key and the registry (module docstring).

    Checkpoints are checked in the order of the chain, so that a mismatch
    names the stretch of history that changed: after the last witnessed
    event that still matches, at or before the first that does not.

    Raises
    ------
    AuditChainError
        Naming the witness file, the checkpoint, and where the registry's
        history departs from it.
    StateError
        The file cannot be read.
    """
    if not path.is_file():
        raise StateError(f"no witness file at {path}: pass the file 'fedguard client witness --out' wrote")
    entries = WitnessLog(path).read()
    expected = fingerprint(public_key)
    checked: list[tuple[int, Witnessed]] = []
    skipped = 0
    for n, entry in enumerate(entries, 1):
        if entry.status in WARNINGS:
            skipped += 1
            continue
        cp = entry.signed.checkpoint
        if cp.key != expected or not entry.signed.verifies(public_key):
            raise AuditChainError(
                f"witness {path} checkpoint {n} (event {cp.event_id}, signed {cp.at}) is not signed by the audit "
                f"key {expected[:16]}: the audit key was replaced since the site witnessed it, or the witness file "
                "was altered; compare the key with the one the sites first saw")
        checked.append((n, entry))
    matched = 0
    for n, entry in sorted(checked, key=lambda item: item[1].head):
        cp = entry.signed.checkpoint
        where = f"witness {path} checkpoint {n} (event {cp.event_id}, {cp.events} events, signed {cp.at})"
        row, before = _position(session, cp.event_id)
        if row is None:
            raise AuditChainError(f"{where}: the registry no longer holds event {cp.event_id}: events after event "
                                  f"{matched} were deleted since a site witnessed them; restore the registry from "
                                  "a backup")
        if row.hash != cp.hash or before != cp.events:
            first = (f"event {cp.event_id}" if matched + 1 >= cp.event_id
                     else f"an event after event {matched} and at or before event {cp.event_id}")
            raise AuditChainError(f"{where}: the registry's history is not the one the site witnessed (rewritten "
                                  f"and rehashed); the first event that differs is {first}; restore the registry "
                                  "from a backup")
        matched = cp.event_id
    last = max(checked, key=lambda item: item[1].head)[1].signed.checkpoint if checked else None
    alarms = sum(1 for _, e in checked if e.status in ALARMS)
    return WitnessVerified(str(path), len(checked), asdict(last) if last else None, alarms, skipped)
