"""The privacy ledger on SQL: SQLite and PostgreSQL implementations.

Both keep the tables of :mod:`privacy.ledger.tables`; they differ in how a
charge's check-then-insert is made atomic across processes:

* SQLite: the transaction opens with a no-op write, which takes the
  database's RESERVED lock, so no other writer can interleave between reading
  the spend and inserting the charge (readers are not blocked).
* PostgreSQL: a transaction-scoped advisory lock serialises ledger writers.

Every write appends an audit event (:func:`lifecycle.audit.record`) in the
same transaction when the database has an audit trail (the registry always
does; a site ledger has its own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, bindparam, delete, inspect, text
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, select

from lifecycle import audit
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.registry.tables import utcnow
from privacy.accountants import ACCOUNTANTS
from privacy.ledger.base import (
    ANY,
    KINDS,
    Cap,
    Charge,
    LedgerConflictError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    applicable_cap,
    evaluate,
)
from privacy.ledger.tables import LedgerEntry, SiteCap

LEDGER_LOCK_KEY = 0x6C656467  # "ledg": one advisory lock serialises ledger writers on PostgreSQL


ENTRY = LedgerEntry.__table__  # type: ignore[attr-defined]  # SQLModel's table, for Core statements
CAP = SiteCap.__table__  # type: ignore[attr-defined]


@functools.cache
def _charges_query(filters: frozenset[str]) -> Select[Any]:
    """The charges filtered on the named columns, bound by name: built once per set of filters.

    A site's reply reads its charges twice (the site's, then the kind's under the writer's lock);
    building the statement anew each time cost more than running it on SQLite.
    """
    query = sa_select(ENTRY)
    for name in sorted(filters):
        query = query.where(ENTRY.c[name] == bindparam(name))
    return query.order_by(ENTRY.c.id)


_CAPS_QUERY = sa_select(CAP).order_by(CAP.c.id)
_INSERT_CHARGE = sa_insert(ENTRY)
_NO_OP_WRITE = delete(CAP).where(text("1 = 0"))


def _to_charge(row: Any) -> Charge:
    return Charge(row.site, row.manifest, row.run_id, row.round, row.kind, row.noise_multiplier,
                  row.sample_rate, row.steps, row.delta, row.accountant, row.created_at)


def _to_cap(row: Any) -> Cap:
    return Cap(row.site, row.manifest, row.kind, row.epsilon_cap, row.delta, row.accountant)


class SqlLedger(PrivacyLedger):
    """Shared SQL logic; use :class:`SQLiteLedger` or :class:`PostgresLedger` (see :func:`ledger_for`)."""

    def __init__(self, engine: Engine, *, audited: bool | None = None,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.now = now
        self.audited = ("audit_event" in inspect(engine).get_table_names()) if audited is None else audited

    # -- dialect hooks -------------------------------------------------------
    def _lock(self, session: Session) -> None:
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                self._lock(session)
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise StateError(f"privacy ledger write failed and was rolled back: {exc}") from exc
            except BaseException:
                session.rollback()
                raise

    def _audit(self, session: Session, action: str, actor: str, subject: str, details: dict[str, Any]) -> None:
        if self.audited:
            audit.record(session, action, actor=actor, subject=subject, details=details)

    @staticmethod
    def _select_charges(session: Session, site: str | None, manifest: str | None, kind: str | None) -> list[Charge]:
        """Charges as plain rows (SQLAlchemy Core, the same query): no ORM objects are built for a read."""
        filters = {"site": site, "manifest": manifest, "kind": kind}
        given = {name: value for name, value in filters.items() if value is not None}
        rows = session.connection().execute(_charges_query(frozenset(given)), given)
        return [_to_charge(r) for r in rows]

    @staticmethod
    def _select_caps(session: Session) -> list[Cap]:
        return [_to_cap(r) for r in session.connection().execute(_CAPS_QUERY)]

    # -- interface -----------------------------------------------------------
    def record(self, charge: Charge, *, actor: str = "fedguard", enforce: bool = True) -> bool:
        return self._record(charge, actor, enforce)[0]

    def record_spent(self, charge: Charge, *, actor: str = "fedguard", enforce: bool = True) -> float:
        """:meth:`record`, and the ε spent afterwards composed in the same transaction (no second read)."""
        return self._record(charge, actor, enforce)[1]

    def _record(self, charge: Charge, actor: str, enforce: bool) -> tuple[bool, float]:
        with self._write() as session:
            try:
                return self._add(session, charge, self._select_caps(session), actor, enforce)
            except IntegrityError:  # a concurrent writer without our lock recorded it first
                session.rollback()
        return False, self.spent(charge.site, charge.manifest, charge.kind)

    def record_reply(self, site: str, manifest: str, build: Callable[[list[Charge]], Sequence[Charge]], *,
                     actor: str = "fedguard", enforce: bool = True) -> dict[str, float]:
        """:meth:`PrivacyLedger.record_reply` in one transaction: the read, every charge and its audit line."""
        try:
            with self._write() as session:
                caps = self._select_caps(session)
                return {charge.kind: self._add(session, charge, caps, actor, enforce)[1]
                        for charge in build(self._select_charges(session, site, manifest, None))}
        except StateError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        # a concurrent writer without our lock recorded one of them first: one transaction each
        return super().record_reply(site, manifest, build, actor=actor, enforce=enforce)

    def record_released(self, charges: Sequence[Charge], *, actor: str = "fedguard") -> int:
        """One transaction for all ``charges`` (each checked as :meth:`record` checks it); how many were new."""
        if not charges:
            return 0
        try:
            with self._write() as session:
                caps = self._select_caps(session)
                added = 0
                for charge in charges:  # the next charge of the same site sees this one (same transaction)
                    added += self._add(session, charge, caps, actor, enforce=False)[0]
        except StateError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # a concurrent writer without our lock recorded one of them first: one transaction each
            return sum(self.record(charge, actor=actor, enforce=False) for charge in charges)
        return added

    def _add(self, session: Session, charge: Charge, caps: list[Cap], actor: str,
             enforce: bool) -> tuple[bool, float]:
        """Check ``charge`` against the charges in ``session``, add it with its audit line; (added, ε spent after).

        False: this exact charge was already there (ε is then what was spent before).
        """
        # one read of this site's, manifest's and kind's charges (under the writers' lock) serves both
        # the duplicate check and the budget evaluation
        charges = self._select_charges(session, charge.site, charge.manifest, charge.kind)
        cap = applicable_cap(caps, charge.site, charge.manifest, charge.kind)
        existing = next((c for c in charges if c.run_id == charge.run_id and c.round == charge.round), None)
        if existing is not None:
            if not existing.same_mechanism(charge):
                raise LedgerConflictError(
                    f"round {charge.round} of run {charge.run_id} was already charged to site "
                    f"'{charge.site}' with other parameters (σ={existing.noise_multiplier:g}, "
                    f"q={existing.sample_rate:g}, steps={existing.steps}); a run must not change its "
                    "DP parameters; investigate before retrying"
                )
            return False, evaluate(charges, cap)[0]
        projected, delta, _ = evaluate(charges, cap, [charge.history()])
        over = cap is not None and projected > cap.epsilon
        if over and enforce:
            assert cap is not None  # the spend before this charge is composed only to say so
            raise PrivacyBudgetExceeded(charge.site, charge.manifest, charge.kind, evaluate(charges, cap)[0],
                                        projected, cap.epsilon, delta)
        session.connection().execute(_INSERT_CHARGE, dict(
            site=charge.site, manifest=charge.manifest, run_id=charge.run_id, round=charge.round,
            kind=charge.kind, noise_multiplier=charge.noise_multiplier, sample_rate=charge.sample_rate,
            steps=charge.steps, delta=charge.delta, accountant=charge.accountant,
            created_at=charge.created_at or self.now(),
        ))
        self._audit(session, "privacy.charged" if not over else "privacy.overspent", actor,
                    f"{charge.site}/{charge.run_id}/{charge.round}",
                    {"manifest": charge.manifest, "kind": charge.kind, "sigma": charge.noise_multiplier,
                     "q": charge.sample_rate, "steps": charge.steps, "delta": delta,
                     "epsilon": projected, "cap": None if cap is None else cap.epsilon})
        return True, projected

    def charges(self, site: str | None = None, manifest: str | None = None, kind: str | None = None) -> list[Charge]:
        with Session(self.engine) as session:
            return self._select_charges(session, site, manifest, kind)

    def caps(self) -> list[Cap]:
        with Session(self.engine) as session:
            return self._select_caps(session)

    def set_cap(self, site: str, epsilon: float, delta: float, *, manifest: str = ANY, kind: str = ANY,
                accountant: str = "rdp", actor: str = "fedguard") -> Cap:
        if not epsilon >= 0 or not 0 < delta < 1:
            raise ConfigurationError(f"invalid cap ε={epsilon}, δ={delta}: use ε ≥ 0 and 0 < δ < 1")
        if kind not in (*KINDS, ANY) or accountant not in ACCOUNTANTS or not site or not manifest:
            raise ConfigurationError(f"invalid cap target site='{site}', manifest='{manifest}', kind='{kind}'")
        with self._write() as session:
            row = session.exec(select(SiteCap).where(
                SiteCap.site == site, SiteCap.manifest == manifest, SiteCap.kind == kind)).first()
            if row is not None and (row.epsilon_cap, row.delta, row.accountant) == (epsilon, delta, accountant):
                return _to_cap(row)
            row = row or SiteCap(site=site, manifest=manifest, kind=kind, epsilon_cap=epsilon, delta=delta)
            row.epsilon_cap, row.delta, row.accountant, row.updated_at = epsilon, delta, accountant, self.now()
            session.add(row)
            self._audit(session, "privacy.cap.set", actor, f"{site}/{manifest}/{kind}",
                        {"epsilon": epsilon, "delta": delta, "accountant": accountant})
            return _to_cap(row)

    def close(self) -> None:
        self.engine.dispose()


class SQLiteLedger(SqlLedger):
    """The ledger on SQLite (the registry's default database, or a site's own file)."""

    def _lock(self, session: Session) -> None:
        # pysqlite begins the transaction at the first write; this no-op write
        # takes the RESERVED lock before anything is read.
        session.connection().execute(_NO_OP_WRITE)


class PostgresLedger(SqlLedger):
    """The ledger on PostgreSQL (a registry at ``FEDGUARD_DATABASE_URL``)."""

    def _lock(self, session: Session) -> None:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LEDGER_LOCK_KEY})
