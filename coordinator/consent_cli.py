"""``fedguard site withdraw NAME``: record a site's consent withdrawal, taint its models, act on production.

Three ways in (docs/governance.md, "Consent withdrawal and taint"):

- no option: the whole site withdraws (the operator records it on the site's behalf);
- ``--records ids.csv``: the listed records; the ids are hashed here with a
  fresh salt that is then thrown away (only their count and digest are
  stored), and the site must still exclude them itself
  (``fedguard client withdraw``);
- ``--statement FILE``: the site's own signed statement
  (:mod:`federation.consent`), verified against the site's active node key
  (a rotated or revoked one only with ``--accept-revoked-key``), recorded
  with source ``site`` and its signature in canonical form, so that a
  replay in another encoding of the same signature is refused.

Exit codes: 4 for an unknown site, 5 for a statement that does not verify,
2 for a malformed one, 3 when the registry write fails: the withdrawal, its
taint and the production changes are one transaction, so then nothing is
recorded and the command can simply be run again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lifecycle.errors import ConfigurationError, NotFoundError, VerificationError

if TYPE_CHECKING:
    from federation.consent import SignedStatement
    from lifecycle.governance.consent import WithdrawalResult
    from lifecycle.registry import Registry

console = Console()
err_console = Console(stderr=True)


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def enrolled_sites(registry: Registry) -> list[str]:
    """The names of every site this federation ever enrolled (none without a federation)."""
    from sqlmodel import Session, select

    from coordinator.provisioning.tables import FederationSite

    with Session(registry.engine) as session:
        return [str(n) for n in session.exec(select(FederationSite.name)).all()]


_CURVE_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
                     16),
    "secp521r1": int("01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8"
                     "899C47AEBB6FB71E91386409", 16),
}
"""The order n of each NIST curve a node key may use (SP 800-186 §3.2.1; the fedguard node key is P-384)."""


def canonical_signature(signed: SignedStatement, public_pem: str) -> SignedStatement:
    """``signed`` with its signature in one canonical encoding: base64 re-encoded, DER with low ``s``.

    ECDSA signatures are malleable: if ``(r, s)`` verifies, so does
    ``(r, n - s)``, and base64 leaves the padding bits free, so anyone holding
    a statement can write other signature texts that verify for it (the
    "low-s" rule of Bitcoin's BIP 62 and BIP 146 closes the first). Stored
    canonically, a replayed statement is the same bytes whatever encoding it
    came in.

    Raises
    ------
    VerificationError
        The signature is not base64 DER ``(r, s)``, or the key is not on a known NIST curve.
    """
    import base64
    import binascii
    from dataclasses import replace

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    try:
        public = serialization.load_pem_public_key(public_pem.encode())
        r, s = decode_dss_signature(base64.b64decode(signed.signature, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise VerificationError(f"the withdrawal statement's signature is malformed ({exc})") from None
    order = _CURVE_ORDERS.get(public.curve.name) if isinstance(public, ec.EllipticCurvePublicKey) else None
    if order is None:
        raise VerificationError("the site's enrolled node key is not an elliptic-curve key on a NIST curve")
    low = encode_dss_signature(r, min(s, order - s))
    return replace(signed, signature=base64.b64encode(low).decode())


def statement_key(signed: SignedStatement) -> str:
    """SHA-256 of the statement's canonical bytes and its key's fingerprint: what a replay is recognised by.

    One value per statement, however its signature is encoded.
    """
    import hashlib

    from federation.consent import DOMAIN

    return hashlib.sha256(DOMAIN + signed.statement.canonical_bytes() + b"\n" + signed.key.encode()).hexdigest()


def recorded_as(registry: Registry, signed: SignedStatement) -> int | None:
    """The id of the withdrawal that already recorded this statement (any signature encoding), or None."""
    from sqlmodel import Session, col, select

    from federation.consent import SignedStatement as Statement
    from lifecycle.governance.tables import ConsentWithdrawal

    wanted = statement_key(signed)
    with Session(registry.engine) as session:
        rows = session.exec(select(ConsentWithdrawal.id, ConsentWithdrawal.statement_json)
                            .where(ConsentWithdrawal.site == signed.statement.site, ConsentWithdrawal.signature != "")
                            .order_by(col(ConsentWithdrawal.id))).all()
    for number, text in rows:
        try:
            if statement_key(Statement.from_json(text)) == wanted:
                return number
        except ConfigurationError:
            continue  # not a statement (a row recorded otherwise): it cannot be this one
    return None


def check_statement(registry: Registry, name: str, signed: SignedStatement, *,
                    accept_revoked: bool = False) -> tuple[str, str]:
    """Verify ``signed`` against the node key the federation issued to site ``name``; that key and a note.

    Only the site's **active** key is accepted: the statement's ``issued-at``
    is chosen by whoever signs it, so a key that leaked and was revoked could
    sign a "backdated" statement. ``accept_revoked`` (``--accept-revoked-key``,
    after the operator checked out of band that the site sent it) accepts a
    rotated or revoked key for a statement claiming to predate its
    revocation; the returned note (empty for the active key) says which key,
    for the withdrawal's audit record. Returns ``(node public key PEM, note)``.

    Raises
    ------
    NotFoundError
        No site ``name`` is enrolled.
    VerificationError
        The statement is another site's, names a key never issued to ``name``, is signed by a rotated or
        revoked key (without ``accept_revoked``, or claiming a time after the revocation), or its
        signature does not verify.
    """
    from sqlmodel import Session, select

    from coordinator.provisioning.tables import ACTIVE, FederationSite, SiteCredential
    from federation.consent import key_fingerprint, verify_statement

    with Session(registry.engine) as session:
        site = session.exec(select(FederationSite).where(FederationSite.name == name)).first()
        if site is None:
            raise NotFoundError(f"no enrolled site '{name}' to verify the statement against; see 'fedguard site list'")
        credentials = session.exec(select(SiteCredential).where(SiteCredential.site_id == site.id)).all()
    if signed.statement.site != name:
        raise VerificationError(f"the statement is for site '{signed.statement.site}', not '{name}'")
    credential = next((c for c in credentials if key_fingerprint(c.node_public_key) == signed.key), None)
    if credential is None:
        raise VerificationError(f"the statement is signed with a key that site '{name}' was never issued "
                                f"({signed.key[:16]}…)")
    note = ""
    if credential.status != ACTIVE:
        what = credential.revoked_reason or credential.status
        revoked = _aware(credential.revoked_at)
        when = f" on {revoked.isoformat(timespec='seconds')}" if revoked is not None else ""
        if not accept_revoked:
            raise VerificationError(f"the statement is signed with a node key of site '{name}' that was {what}{when} "
                                    f"({signed.key[:16]}…); only the site's active key is accepted, since the signer "
                                    "chooses issued-at: have the site sign again with its current bundle, or pass "
                                    "--accept-revoked-key once you confirmed out of band that the site sent it")
        issued = _aware(datetime.fromisoformat(signed.statement.issued_at))
        if revoked is None or issued is None or issued > revoked:
            raise VerificationError(f"the statement claims to be issued after the node key of site '{name}' was {what}"
                                    f"{when}; the site must sign again with its current bundle")
        note = f"signed with the site's {what} node key {signed.key[:16]} (--accept-revoked-key)"
    verify_statement(signed, credential.node_public_key)
    return credential.node_public_key, note


def withdraw(
    name: Annotated[str, typer.Argument(help="The site's enrolled name (or its name in the models' lineage).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the registry and the audit trail).")],
    records: Annotated[Path | None, typer.Option("--records", help="CSV of the withdrawn record ids (header row); "
                                                 "only their count and a salted digest are kept.")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The column of --records holding the ids "
                                                  "[the file's only column].")] = None,
    statement: Annotated[Path | None, typer.Option("--statement", help="The site's signed statement from "
                                                   "'fedguard client withdraw'.")] = None,
    accept_revoked_key: Annotated[bool, typer.Option(
        "--accept-revoked-key", help="Accept a --statement signed by the site's rotated or revoked node key "
        "(confirm with the site first; recorded with the withdrawal).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Record a consent withdrawal (whole site, --records, or the site's --statement); taint and block its models."""
    from coordinator.cli import _actor
    from federation.consent import RECORDS, SITE, SignedStatement, canonical_id, new_salt, read_ids, records_digest
    from lifecycle.governance.consent import ConsentStore
    from lifecycle.registry import Registry
    from lifecycle.settings import get_settings

    if records is not None and statement is not None:
        raise ConfigurationError("give --records or --statement, not both")
    registry = Registry.open(get_settings())
    store, enrolled, actor = ConsentStore(registry), enrolled_sites(registry), _actor()
    if statement is not None:
        signed = SignedStatement.read(statement)
        public_pem, note = check_statement(registry, name, signed, accept_revoked=accept_revoked_key)
        signed = canonical_signature(signed, public_pem)
        same = recorded_as(registry, signed)
        if same is not None:
            raise ConfigurationError(f"this signed statement is already recorded (withdrawal #{same})")
        if note:
            err_console.print(f"[yellow]warning[/yellow]: {escape(note)}: the statement's issued-at is the signer's "
                              "claim; recorded with the withdrawal", highlight=False, soft_wrap=True)
        s = signed.statement
        result = store.withdraw(name, scope=s.scope, record_count=s.record_count, records_digest=s.records_digest,
                                reason=f"{reason} [{note}]" if note else reason, actor=actor, source="site",
                                statement_json=signed.to_json(), signature=signed.signature, enrolled=enrolled)
    elif records is not None:
        ids = {canonical_id(i) for i in read_ids(records, id_column)}
        digest = records_digest(ids, new_salt())  # the salt is dropped: the coordinator cannot open it
        result = store.withdraw(name, scope=RECORDS, record_count=len(ids), records_digest=digest, reason=reason,
                                actor=actor, enrolled=enrolled)
    else:
        result = store.withdraw(name, scope=SITE, reason=reason, actor=actor, enrolled=enrolled)
    _report(result, records is not None, as_json)


def _report(result: WithdrawalResult, by_records: bool, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    w = result.withdrawal
    what = "the whole site" if w.scope == "site" else f"{w.record_count} record(s) (digest {w.records_digest[:16]}…)"
    console.print(f"withdrawal [bold]#{w.id}[/bold]: site [bold]{escape(w.site)}[/bold] withdrew {what}"
                  f"{' (signed statement verified)' if w.signed else ''}", highlight=False, soft_wrap=True)
    console.print("tainted    " + (", ".join(result.tainted) or "no version (none was trained on this site)"),
                  highlight=False, soft_wrap=True)
    for d in result.deployments:
        console.print(f"deployment {escape(d.model)} in {escape(d.environment)}: {d.action} (policy {d.policy}"
                      f"{', from version ' + str(d.from_version) if d.from_version else ''}"
                      f"{', now version ' + str(d.to_version) if d.to_version else ''}) {escape(d.detail)}",
                      highlight=False, soft_wrap=True)
    if not result.deployments:
        console.print("deployments: none served a tainted version", highlight=False)
    if by_records:
        err_console.print("the ids were hashed here and not kept. The site must exclude these records itself: "
                          f"'fedguard client withdraw --records FILE' at site {escape(w.site)}", highlight=False,
                          soft_wrap=True)
