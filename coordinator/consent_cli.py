"""``fedguard site withdraw NAME``: record a site's consent withdrawal, taint its models, act on production.

Three ways in (docs/governance.md, "Consent withdrawal and taint"):

- no option: the whole site withdraws (the operator records it on the site's behalf);
- ``--records ids.csv``: the listed records; the ids are hashed here with a
  fresh salt that is then thrown away (only their count and digest are
  stored), and the site must still exclude them itself
  (``fedguard client withdraw``);
- ``--statement FILE``: the site's own signed statement
  (:mod:`federation.consent`), verified against the node key the federation
  enrolled for the site, recorded verbatim with source ``site``.

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


def check_statement(registry: Registry, name: str, signed: SignedStatement) -> None:
    """Verify ``signed`` against the node key the federation issued to site ``name``.

    A key that was rotated or revoked since is accepted only for a statement
    issued before that happened.

    Raises
    ------
    NotFoundError
        No site ``name`` is enrolled.
    VerificationError
        The statement is another site's, names a key never issued to ``name``, was signed after that key
        was revoked, or its signature does not verify.
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
        raise VerificationError(f"the statement is site '{signed.statement.site}''s, not '{name}''s")
    credential = next((c for c in credentials if key_fingerprint(c.node_public_key) == signed.key), None)
    if credential is None:
        raise VerificationError(f"the statement is signed with a key that site '{name}' was never issued "
                                f"({signed.key[:16]}…)")
    revoked = _aware(credential.revoked_at)
    issued = _aware(datetime.fromisoformat(signed.statement.issued_at))
    if credential.status != ACTIVE and (revoked is None or issued is None or issued > revoked):
        raise VerificationError(f"the statement was signed with site '{name}''s node key after that key was "
                                f"{credential.revoked_reason or 'revoked'}; the site must sign again with its "
                                "current bundle")
    verify_statement(signed, credential.node_public_key)


def withdraw(
    name: Annotated[str, typer.Argument(help="The site's enrolled name (or its name in the models' lineage).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the registry and the audit trail).")],
    records: Annotated[Path | None, typer.Option("--records", help="CSV of the withdrawn record ids (header row); "
                                                 "only their count and a salted digest are kept.")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The column of --records holding the ids "
                                                  "[the file's only column].")] = None,
    statement: Annotated[Path | None, typer.Option("--statement", help="The site's signed statement from "
                                                   "'fedguard client withdraw'.")] = None,
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
        check_statement(registry, name, signed)
        s = signed.statement
        result = store.withdraw(name, scope=s.scope, record_count=s.record_count, records_digest=s.records_digest,
                                reason=reason, actor=actor, source="site", statement_json=signed.to_json(),
                                signature=signed.signature, enrolled=enrolled)
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
