"""Per-subject exceptions at inference: data subjects who objected to being scored by a model.

A patient (or bank customer) may object to automated processing of their data
(GDPR Art. 21, the right to object; Art. 22, automated individual
decision-making). The consortium records the objection against a model in a
named environment; every serving replica of that environment then refuses a
predict request that names the subject (``subject_id``), before the model
sees it (``serving.guards.objections``).

The registry never holds an identifier in the clear. Each one is stored as
HMAC-SHA256 under a registry-wide secret key (``FEDGUARD_HOME/keys/subject-key``,
32 random bytes, 0600, created on first use) in a
:class:`~lifecycle.governance.tables.SubjectException` row. Every write is
one transaction with its audit event (``objection.added``,
``objection.removed``), which carries counts, never identifiers or digests,
and the key's fingerprint (:func:`key_fingerprint`): a machine holding
another key is refused (:meth:`ObjectionStore.key`) rather than left to
compute digests that never match, which would let objecting subjects be scored.

Notes
-----
Why a keyed hash: identifiers live in small spaces (a 10-digit patient
number is 10^10 candidates), so an unsalted SHA-256 lets anyone holding a
copy of the database confirm a guessed identifier, or enumerate them all, in
seconds. HMAC (Krawczyk, Bellare & Canetti, RFC 2104, 1997) under a 256-bit
secret key is a pseudorandom function (Bellare 2006, "New proofs for NMAC and
HMAC"): without the key, a digest reveals nothing and a guess cannot be
checked. This is pseudonymisation in the sense of GDPR Art. 4(5): the key is
the "additional information kept separately". A per-row random salt would
not work here, since a replica must find a request's identifier among the
digests with one lookup. Replicas share ``FEDGUARD_HOME`` (registry and keys),
so they compute the same digests. Whoever holds both the database and the
key can still test guesses: keep ``keys/`` as private as the signing key, and
back it up with the registry. Without the key, the stored digests can no
longer be matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.governance.tables import SubjectException
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT, validate_environment
from lifecycle.registry.store import _NAME, Registry
from lifecycle.registry.tables import AuditEvent, RegisteredModel, aware, utcnow

SUBJECT_KEY_NAME = "subject-key"
SUBJECT_KEY_BYTES = 32
MAX_SUBJECT_ID = 128
SUBJECT_ID_PATTERN = r"^[ -~]{1,128}$"
"""1-128 printable ASCII characters (space to ``~``): what the API's ``subject_id`` and the CLI accept."""
MAX_REASON = 512
_SUBJECT_ID = re.compile(SUBJECT_ID_PATTERN)
_CHUNK = 500  # digests per IN (...) clause: far below SQLite's and PostgreSQL's parameter limits
_LEAK_MIN_LENGTH = 4  # shorter identifiers ("7") are too likely to occur in any reason by chance
AUDIT_ACTIONS = ("objection.added", "objection.removed")
SUBJECT_ID_RULE = "1-128 printable ASCII characters (letters, digits, punctuation, spaces)"


def is_subject_id(value: str) -> bool:
    """Whether ``value`` is a well-formed subject identifier (see :data:`SUBJECT_ID_PATTERN`)."""
    return _SUBJECT_ID.fullmatch(value) is not None


def validate_subject_id(value: str, where: str = "a subject identifier") -> str:
    """``value`` unchanged if well-formed; the error never echoes it (it may be a patient number).

    Raises
    ------
    ConfigurationError
        ``where`` is not :data:`SUBJECT_ID_RULE`.
    """
    if not is_subject_id(value):
        raise ConfigurationError(f"{where} is not {SUBJECT_ID_RULE}; fix it and try again")
    return value


def key_fingerprint(key: bytes) -> str:
    """Names a subject key without revealing it: HMAC of a fixed label under the key, 16 hex digits.

    Recorded in every ``objection.*`` audit event, so that a machine holding
    another key (a replica given its own ``FEDGUARD_HOME``) is refused instead
    of silently computing digests that never match.
    """
    return hmac.new(key, b"fedguard subject-key fingerprint", hashlib.sha256).hexdigest()[:16]


def subject_digest(key: bytes, subject_id: str) -> str:
    """HMAC-SHA256 of ``subject_id`` (UTF-8) under ``key``, hex: how a subject is stored and looked up (RFC 2104)."""
    return hmac.new(key, subject_id.encode(), hashlib.sha256).hexdigest()


def load_subject_key(keys_dir: Path) -> bytes:
    """The registry's subject key (``keys_dir/subject-key``), created on first use.

    Creation is atomic and first-writer-wins: the key is written to a private
    temporary file and hard-linked into place, so two replicas starting at
    once end up with one key, never one each.

    Raises
    ------
    StateError
        The key cannot be read or created, or is not 32 bytes long.
    """
    path = keys_dir / SUBJECT_KEY_NAME
    try:
        if not path.exists():
            _create_key(keys_dir, path)
        key = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read or create the subject key {path}: {exc.strerror or exc}; "
                         "check FEDGUARD_HOME/keys") from exc
    if len(key) != SUBJECT_KEY_BYTES:
        raise StateError(f"the subject key {path} is {len(key)} bytes, not {SUBJECT_KEY_BYTES}; "
                         "restore it from a backup (the recorded objections can only be matched with it)")
    return key


def _create_key(keys_dir: Path, path: Path) -> None:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=keys_dir, prefix=f".{SUBJECT_KEY_NAME}.")  # 0600
    try:
        os.write(fd, secrets.token_bytes(SUBJECT_KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        os.unlink(tmp)


def _clean_reason(reason: str, subject_ids: Iterable[str]) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in reason).split())[:MAX_REASON]
    if not text:
        raise ConfigurationError("give a reason (--reason): why the objection is recorded or lifted, "
                                 "without naming the subject")
    if any(len(s) >= _LEAK_MIN_LENGTH and s in reason for s in subject_ids):
        raise ConfigurationError("the reason contains a subject identifier; the reason is kept in the clear "
                                 "and in the audit trail: describe the objection without naming the subject")
    return text



@dataclass(frozen=True)
class ObjectionRevision:
    """What a replica polls to see whether a list changed: row count, newest id, newest time.

    The count alone misses one removal plus one addition; the newest id alone
    misses SQLite reusing the id of a deleted newest row; the newest time
    catches that (an addition is always later than the rows it joins).
    """

    count: int
    last_id: int
    last_at: datetime | None


@dataclass(frozen=True)
class ObjectionBatch:
    """Subjects added together (one ``add``): when, by whom, why, and how many of them are still listed."""

    added_at: datetime
    actor: str
    reason: str
    count: int


@dataclass(frozen=True)
class ObjectionSummary:
    """A model's exceptions in one environment: counts and dates, never identifiers."""

    model: str
    environment: str
    count: int
    batches: tuple[ObjectionBatch, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batches"] = [{**asdict(b), "added_at": b.added_at.isoformat()} for b in self.batches]
        return data


class ObjectionStore:
    """Audited reads and writes of subject exceptions, over one :class:`Registry`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._key: bytes | None = None

    # --------------------------------------------------------------- digests
    def key(self, *, create: bool = True) -> bytes:
        """The registry's subject key (read once per store), checked against the one its objections were made with.

        ``create``: make the key if this machine has none and the registry
        records no objection yet (the CLI); serving passes ``False``.

        Raises
        ------
        StateError
            The key is missing while the registry holds objections (or
            ``create`` is false), or it is another key than the one they were
            recorded with: digests computed with it would never match, and
            objecting subjects would be scored.
        """
        if self._key is None:
            recorded = self._recorded_fingerprint()
            path = self.registry.home.keys / SUBJECT_KEY_NAME
            if not path.exists() and (recorded is not None or not create):
                raise StateError(f"no subject key at {path}, so the objections recorded in the registry cannot be "
                                 "matched; copy FEDGUARD_HOME/keys/subject-key from the machine that recorded them")
            key = load_subject_key(self.registry.home.keys)
            if recorded is not None and key_fingerprint(key) != recorded:
                raise StateError(f"the subject key {path} (fingerprint {key_fingerprint(key)}) is not the one the "
                                 f"registry's objections were recorded with ({recorded}); replace it with "
                                 "FEDGUARD_HOME/keys/subject-key from the machine that recorded them")
            self._key = key
        return self._key

    def digest(self, subject_id: str) -> str:
        """The stored form of ``subject_id`` (validated first)."""
        return subject_digest(self.key(), validate_subject_id(subject_id))

    # ---------------------------------------------------------------- writes
    def add(self, model: str, environment: str, subject_ids: Sequence[str], *, reason: str, actor: str) -> int:
        """List ``subject_ids`` as objecting to ``model`` in ``environment``; return how many were not listed yet.

        Subjects already listed keep their row (and its first reason). Nothing
        new: nothing written, no audit event.

        Raises
        ------
        NotFoundError
            No model of that name.
        ConfigurationError
            An identifier is malformed (the message gives its position, not
            its value), none is given, the reason is empty or names a
            subject, or the environment name is invalid.
        """
        environment, digests, text = self._prepare(environment, subject_ids, reason)
        with self.registry.transaction() as session:
            model_id = self._model_id(session, model, lock=True)
            existing = self._listed(session, model_id, environment)
            new = sorted(set(digests) - existing)
            if new:
                now = utcnow()
                session.add_all([SubjectException(model_id=model_id, environment=environment, subject_digest=d,
                                                  reason=text, actor=actor[:128], created_at=now) for d in new])
                audit.record(session, "objection.added", actor=actor[:128], subject=model,
                             details={"environment": environment, "count": len(new), "reason": text,
                                      "key": key_fingerprint(self.key())})
            return len(new)

    def remove(self, model: str, environment: str, subject_ids: Sequence[str], *, reason: str, actor: str) -> int:
        """Lift the objections of ``subject_ids``; return how many of them were listed.

        Nothing listed: nothing written, no audit event.

        Raises
        ------
        NotFoundError, ConfigurationError
            As :meth:`add`.
        """
        environment, digests, text = self._prepare(environment, subject_ids, reason)
        unique = sorted(set(digests))
        with self.registry.transaction() as session:
            model_id = self._model_id(session, model, lock=True)
            removed = 0
            for start in range(0, len(unique), _CHUNK):
                result = session.exec(delete(SubjectException).where(
                    col(SubjectException.model_id) == model_id, col(SubjectException.environment) == environment,
                    col(SubjectException.subject_digest).in_(unique[start:start + _CHUNK])))
                removed += int(result.rowcount or 0)
            if removed:
                audit.record(session, "objection.removed", actor=actor[:128], subject=model,
                             details={"environment": environment, "count": removed, "reason": text,
                                      "key": key_fingerprint(self.key())})
            return removed

    # ----------------------------------------------------------------- reads
    def count(self, model: str, environment: str = DEFAULT_ENVIRONMENT) -> int:
        """How many subjects objected to ``model`` in ``environment``."""
        with Session(self.registry.engine) as session:
            return self._count(session, self._model_id(session, model), validate_environment(environment))

    def digests(self, model: str, environment: str = DEFAULT_ENVIRONMENT) -> frozenset[str]:
        """The stored digests of ``model``'s exceptions in ``environment`` (what a serving replica holds)."""
        with Session(self.registry.engine) as session:
            return frozenset(self._listed(session, self._model_id(session, model), validate_environment(environment)))

    def revision(self, model: str, environment: str = DEFAULT_ENVIRONMENT) -> ObjectionRevision:
        """The cheap fingerprint of ``model``'s list in ``environment`` (:class:`ObjectionRevision`)."""
        with Session(self.registry.engine) as session:
            model_id = self._model_id(session, model)
            row = session.exec(
                select(func.count(col(SubjectException.id)), func.max(SubjectException.id),
                       func.max(SubjectException.created_at))
                .where(SubjectException.model_id == model_id,
                       SubjectException.environment == validate_environment(environment))
            ).one()
            return ObjectionRevision(int(row[0]), int(row[1] or 0), aware(row[2]) if row[2] else None)

    def revisions(self, environment: str = DEFAULT_ENVIRONMENT) -> dict[str, ObjectionRevision]:
        """``{model name: revision}`` of every model with exceptions in ``environment``: one query, for polling."""
        with Session(self.registry.engine) as session:
            rows = session.exec(
                select(RegisteredModel.name, func.count(col(SubjectException.id)), func.max(SubjectException.id),
                       func.max(SubjectException.created_at))
                .join(RegisteredModel, col(RegisteredModel.id) == col(SubjectException.model_id))
                .where(SubjectException.environment == validate_environment(environment))
                .group_by(RegisteredModel.name)
            ).all()
            return {name: ObjectionRevision(int(n), int(last or 0), aware(at) if at else None)
                    for name, n, last, at in rows}

    def summary(self, model: str, environment: str = DEFAULT_ENVIRONMENT) -> ObjectionSummary:
        """Counts per batch (when added, by whom, why) and in all; never identifiers or digests."""
        environment = validate_environment(environment)
        with Session(self.registry.engine) as session:
            model_id = self._model_id(session, model)
            rows = session.exec(
                select(SubjectException.created_at, SubjectException.actor, SubjectException.reason,
                       func.count(col(SubjectException.id)))
                .where(SubjectException.model_id == model_id, SubjectException.environment == environment)
                .group_by(col(SubjectException.created_at), col(SubjectException.actor),
                          col(SubjectException.reason))
                .order_by(col(SubjectException.created_at))
            ).all()
        batches = tuple(ObjectionBatch(aware(at), actor, reason, int(n)) for at, actor, reason, n in rows)
        return ObjectionSummary(model, environment, sum(b.count for b in batches), batches)

    # --------------------------------------------------------------- helpers
    def _recorded_fingerprint(self) -> str | None:
        """The subject key named by the newest ``objection.*`` audit event (an index look-up), if any."""
        with Session(self.registry.engine) as session:
            details = session.exec(
                select(AuditEvent.details_json).where(col(AuditEvent.action).in_(AUDIT_ACTIONS))
                .order_by(col(AuditEvent.id).desc()).limit(1)
            ).first()
        recorded = json.loads(details).get("key") if details else None
        return str(recorded) if recorded else None

    def _prepare(self, environment: str, subject_ids: Sequence[str], reason: str) -> tuple[str, list[str], str]:
        environment = validate_environment(environment)
        if not subject_ids:
            raise ConfigurationError("no subject identifier given; pass --subject ID or --file FILE")
        for position, subject_id in enumerate(subject_ids, start=1):
            validate_subject_id(subject_id, f"subject identifier {position} of {len(subject_ids)}")
        text = _clean_reason(reason, subject_ids)
        key = self.key()
        return environment, [subject_digest(key, s) for s in subject_ids], text

    @staticmethod
    def _model_id(session: Session, name: str, lock: bool = False) -> int:
        if not _NAME.fullmatch(name):  # never send a malformed name (NUL bytes, 10k characters) to the database
            raise NotFoundError(f"no model named {name[:128]!r}; see 'fedguard models list'")
        query = select(RegisteredModel.id).where(RegisteredModel.name == name)
        if lock:  # PostgreSQL: serialise writers of one model's lists; publishing a version is not blocked
            query = query.with_for_update(key_share=True)
        found = session.exec(query).first()
        if found is None:
            raise NotFoundError(f"no model named '{name}'; see 'fedguard models list'")
        return int(found)

    @staticmethod
    def _listed(session: Session, model_id: int, environment: str) -> set[str]:
        return set(session.exec(select(SubjectException.subject_digest).where(
            SubjectException.model_id == model_id, SubjectException.environment == environment)).all())

    @staticmethod
    def _count(session: Session, model_id: int, environment: str) -> int:
        return int(session.exec(select(func.count(col(SubjectException.id))).where(
            SubjectException.model_id == model_id, SubjectException.environment == environment)).one())
