"""Signed approvals and overrides: who allowed which version into which stage, provably.

An approval is a **statement** — ``{action, model, version, artifact_digest,
stage, environment, reason, approver, approver_name, signed_at}`` serialised as
canonical JSON (keys sorted, no spaces, UTF-8) — and an Ed25519 signature over
exactly those bytes by the approver's key (:mod:`lifecycle.governance.operator`).
The registry stores the statement, the signature (base64) and the public key
(PEM) in an :class:`~lifecycle.governance.tables.Approval` row, in the same
transaction as its audit event. Because the statement names the artifact's
SHA-256, an approval cannot be moved to another artifact; because it is
signed, it cannot be edited or denied (non-repudiation); and anyone holding
the approver's public key can check it with ``cryptography`` alone
(:func:`verify_statement`; docs/governance.md shows the five lines).

Notes
-----
Ed25519 (RFC 8032; Bernstein et al., "High-speed high-security signatures",
2012) signs the message itself, not a caller-chosen hash, so there is no
hash-and-padding choice to get wrong; a verifier need only agree on the bytes,
hence the canonical JSON (the same rule as the audit chain's hashes).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.audit.checkpoints import fingerprint
from lifecycle.errors import ConfigurationError, GovernanceError, VerificationError
from lifecycle.governance.decisions import REGISTERED, STAGES
from lifecycle.governance.enforce import APPROVE, KINDS, version_row
from lifecycle.governance.operator import ApproverKey
from lifecycle.governance.policy import Policy
from lifecycle.governance.tables import Approval
from lifecycle.registry import Registry
from lifecycle.registry.deployments import validate_environment
from lifecycle.registry.tables import ModelVersion

logger = logging.getLogger("fedguard.lifecycle.governance")
MAX_REASON = 512


class ApprovalError(VerificationError):
    """A stored approval's signature or statement does not verify (exit code 5); the message names the approval."""


@dataclass(frozen=True)
class Statement:
    """What an approver signs (every field is in the signed bytes)."""

    action: str
    model: str
    version: int
    artifact_digest: str
    stage: str
    environment: str
    reason: str
    approver: str
    """SHA-256 fingerprint of the approver's public key (hex)."""
    approver_name: str
    signed_at: str
    """ISO 8601, UTC."""

    def canonical(self) -> bytes:
        """The signed bytes: JSON with sorted keys and no whitespace, UTF-8."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def parse(cls, data: bytes | str) -> Statement:
        """A statement from its canonical JSON (refusing one with missing or extra fields)."""
        try:
            fields = json.loads(data)
            return cls(**{**fields, "version": int(fields["version"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise ApprovalError(f"an approval statement is not valid JSON of the expected fields: {exc}") from exc


@dataclass(frozen=True)
class ApprovalRecord:
    """One stored approval or override, as ``fedguard models approvals`` shows it."""

    id: int
    kind: str
    model: str
    version: int
    stage: str
    environment: str
    approver: str
    approver_name: str
    reason: str
    signed_at: str
    used: bool
    statement: str
    signature: str
    public_key_pem: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _public_key(pem: str | bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, TypeError) as exc:
        raise ApprovalError(f"the approver public key is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ApprovalError("the approver public key is not an Ed25519 key (approver keys are Ed25519)")
    return key


def verify_statement(statement: bytes, signature: str | bytes, public_key_pem: str | bytes) -> Statement:
    """Check ``signature`` over ``statement`` with the approver's public key; the parsed statement if it holds.

    This is all an outside verifier needs: the exported statement bytes, the
    signature (base64 text or raw bytes) and the public key.

    Raises
    ------
    ApprovalError
        The signature does not verify, or the statement names another key as
        its approver than the one given.
    """
    key = _public_key(public_key_pem)
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else signature
        key.verify(raw, statement)
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise ApprovalError("the approval's signature does not verify against the given public key "
                            "(the statement was altered, or another key signed it)") from exc
    parsed = Statement.parse(statement)
    if parsed.approver != fingerprint(key):
        raise ApprovalError(f"the statement names approver {parsed.approver[:16]}…, not the given key "
                            f"{fingerprint(key)[:16]}…")
    return parsed


def make_statement(key: ApproverKey, action: str, name: str, row: ModelVersion, *, stage: str, environment: str,
                   reason: str, now: datetime | None = None) -> Statement:
    """What ``key`` signs to approve (or override) version ``row`` of ``name`` into ``stage`` in ``environment``."""
    return Statement(action=action, model=name, version=row.version, artifact_digest=row.artifact_digest,
                     stage=stage, environment=environment, reason=reason, approver=key.fingerprint,
                     approver_name=key.name, signed_at=(now or datetime.now(UTC)).astimezone(UTC).isoformat())


def signed_row(key: ApproverKey, statement: Statement, version_id: int, *, used: bool = False) -> Approval:
    """The :class:`Approval` row holding ``statement`` and ``key``'s signature of it."""
    return Approval(
        model_version_id=version_id, stage=statement.stage, environment=statement.environment,
        kind=statement.action, approver=statement.approver, approver_name=statement.approver_name[:128],
        reason=statement.reason, statement_json=statement.canonical().decode(),
        signature=base64.b64encode(key.sign(statement.canonical())).decode(), public_key_pem=key.public_pem,
        used=used,
    )


def check_reason(reason: str, *, required: bool) -> str:
    """``reason`` cleaned for the record (printable, at most 512 characters); refused empty when ``required``."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    if required and not cleaned:
        raise ConfigurationError("an override needs a reason: pass --reason TEXT (it is signed and audited)")
    if len(cleaned) > MAX_REASON:
        raise ConfigurationError(f"the reason is {len(cleaned)} characters long; use at most {MAX_REASON}")
    return cleaned


def check_stage(stage: str) -> str:
    """``stage`` if a version can be approved into it (``staging`` or ``production``)."""
    if stage not in STAGES or stage == REGISTERED:
        raise ConfigurationError(f"invalid stage {stage[:32]!r}: use one of {', '.join(STAGES[1:])}")
    return stage


def _record(row: Approval, statement: Statement) -> ApprovalRecord:
    return ApprovalRecord(
        id=int(row.id or 0), kind=row.kind, model=statement.model, version=statement.version, stage=row.stage,
        environment=row.environment, approver=row.approver, approver_name=row.approver_name, reason=row.reason,
        signed_at=statement.signed_at, used=row.used, statement=row.statement_json, signature=row.signature,
        public_key_pem=row.public_key_pem,
    )


def check_row(row: Approval, name: str, version: ModelVersion, public_key_pem: str | None = None) -> Statement:
    """Verify a stored approval: its signature, and that its statement says what the row and version say.

    The row's columns are only an index: a row edited in the database but
    not re-signed no longer matches its statement, and an approval of another
    artifact (a different digest) does not approve this one.

    Raises
    ------
    ApprovalError
        Naming the approval (``#id``) and what does not hold.
    """
    try:
        statement = verify_statement(row.statement_json.encode(), row.signature,
                                     public_key_pem if public_key_pem is not None else row.public_key_pem)
    except ApprovalError as exc:
        raise ApprovalError(f"approval #{row.id} of {name}:{version.version} does not verify: {exc}") from exc
    expected = {"action": row.kind, "model": name, "version": version.version,
                "artifact_digest": version.artifact_digest, "stage": row.stage, "environment": row.environment,
                "approver": row.approver, "reason": row.reason}
    signed = asdict(statement)
    wrong = sorted(k for k, v in expected.items() if signed[k] != v)
    if wrong:
        raise ApprovalError(f"approval #{row.id} of {name}:{version.version} does not match its signed statement "
                            f"({', '.join(wrong)} differ): the registry row was altered")
    return statement


def usable(session: Session, name: str, version: ModelVersion, *, stage: str, environment: str,
           policy: Policy | None = None) -> list[Approval]:
    """Unused, verified approvals of ``version`` into ``stage`` in ``environment``: one per approver key.

    An approval that fails verification is skipped (and logged), so it never
    counts towards a policy's required number; so is a copy of a stored
    signature (a used approval duplicated into a fresh row: only the first row
    holding a signature counts, once), and, when ``policy`` lists
    ``approvers``, an approval by a key it does not list.
    """
    rows = session.exec(
        select(Approval).where(Approval.model_version_id == version.id, Approval.kind == APPROVE,
                               Approval.stage == stage, Approval.environment == environment,
                               col(Approval.used).is_(False)).order_by(col(Approval.id))
    ).all()
    first = _first_holders(session, [r.signature for r in rows])
    chosen: dict[str, Approval] = {}
    for row in rows:
        if first.get(row.signature) != row.id:
            logger.warning("not counting approval #%s of %s:%d: its signature is a copy of approval #%s", row.id,
                           name, version.version, first.get(row.signature))
            continue
        if policy is not None and not policy.allows(row.approver):
            logger.warning("not counting approval #%s of %s:%d: approver %s… is not in the policy's approvers",
                           row.id, name, version.version, row.approver[:16])
            continue
        try:
            check_row(row, name, version)
        except ApprovalError as exc:
            logger.warning("not counting %s", exc)
            continue
        chosen.setdefault(row.approver, row)
    return list(chosen.values())


def _first_holders(session: Session, signatures: list[str]) -> dict[str, int]:
    """``{signature: id of the first stored row holding it}`` for each of ``signatures`` that is stored."""
    if not signatures:
        return {}
    held = session.exec(select(Approval.signature, Approval.id).where(col(Approval.signature).in_(set(signatures)))
                        .order_by(col(Approval.id).desc())).all()
    return {signature: int(row_id) for signature, row_id in held if row_id is not None}


def store(session: Session, approval: Approval) -> Approval:
    """Add a newly signed ``approval`` row (flushed), refusing a signature the registry already holds.

    Ed25519 signatures are deterministic (RFC 8032 §5.1.6): the same key over
    the same statement gives the same bytes, so a stored signature seen again
    is a replay of an approval that may already have been used.

    Raises
    ------
    GovernanceError
        The signature is already stored (nothing is added).
    """
    if _first_holders(session, [approval.signature]):
        raise GovernanceError(f"this signed {approval.kind} of stage {approval.stage} in '{approval.environment}' is "
                              "already stored (a signature counts once); sign a new one")
    session.add(approval)
    session.flush()
    return approval


def approve(registry: Registry, name: str, version: int, *, stage: str, environment: str, key: ApproverKey,
            reason: str = "", actor: str | None = None, now: datetime | None = None) -> ApprovalRecord:
    """Sign and record ``key``'s approval of ``name:version`` into ``stage`` in ``environment`` (audited).

    Raises
    ------
    NotFoundError
        No such model or version.
    ConfigurationError
        A bad stage or environment name, or this key already holds an unused
        approval of the same move.
    """
    check_stage(stage)
    validate_environment(environment)
    reason = check_reason(reason, required=False)
    with registry.transaction() as session:
        _, row = version_row(session, name, version)
        assert row.id is not None
        if any(a.approver == key.fingerprint for a in usable(session, name, row, stage=stage,
                                                              environment=environment)):
            raise ConfigurationError(
                f"approver {key.fingerprint[:16]}… already approved {name}:{version} for {stage} in "
                f"'{environment}' (not used yet); a policy counts each key once"
            )
        statement = make_statement(key, APPROVE, name, row, stage=stage, environment=environment, reason=reason,
                                   now=now)
        approval = store(session, signed_row(key, statement, row.id))
        audit.record(session, "approval.signed", actor=key.actor(actor)[:128], subject=f"{name}:{version}",
                     details={"approval": approval.id, "kind": APPROVE, "stage": stage, "environment": environment,
                              "approver": key.fingerprint, "approver_name": key.name, "reason": reason,
                              "artifact": row.artifact_digest})
        return _record(approval, statement)


def approvals(registry: Registry, name: str, version: int, *, public_key_pem: str | None = None,
              verify: bool = True) -> list[ApprovalRecord]:
    """Every approval and override of ``name:version``, oldest first, each re-verified unless ``verify`` is false.

    With ``public_key_pem``, each must verify against that key (an approval
    by another key fails); otherwise against the key stored with it.

    Raises
    ------
    ApprovalError
        The first approval that does not verify (exit code 5), by id.
    """
    with Session(registry.engine) as session:
        _, row = version_row(session, name, version)
        rows = session.exec(select(Approval).where(Approval.model_version_id == row.id)
                            .order_by(col(Approval.id))).all()
        records = []
        for approval in rows:
            if approval.kind not in KINDS:
                raise ApprovalError(f"approval #{approval.id} of {name}:{version} has unknown kind {approval.kind!r}")
            statement = check_row(approval, name, row, public_key_pem) if verify else Statement.parse(
                approval.statement_json)
            records.append(_record(approval, statement))
        return records
