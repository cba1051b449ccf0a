"""The site's own consent list: which records it withdrew, whether it withdrew as a whole, and when.

``fedguard client withdraw`` (issue 14, point 4) does three things at the
site, in this order:

1. records the withdrawal in the site's consent list
   (:attr:`lifecycle.home.SiteHome.consent`, 0600): the withdrawn ids
   (canonical text), or that the whole site withdrew, and a history entry
   with the time, count, salt and digest, so that the withdrawal is in force
   before anyone else hears of it;
2. writes the statement the coordinator's operator records
   (``fedguard site withdraw NAME --statement FILE``): the count and a
   salted digest only (:mod:`federation.consent`), signed with the site's
   node key from its bundle;
3. appends the statement's size and SHA-256 to the site's local audit log.

From then on the site agent drops the withdrawn records from every load of
its file (:func:`client.data.load_site_data`), and after a whole-site
withdrawal it refuses every message (:class:`ConsentWithdrawnError`, refusal
code ``consent-withdrawn``). A whole-site withdrawal is final here: there is
no undo command; a site that consents again is enrolled again.

The list keeps the ids themselves (the site must match them against its
rows); they never leave the site. Entries are only ever added: the history
is the site's record of what it withdrew, and each entry's salt lets the
site open the digest it sent (prove which ids it covered) if ever asked.
The privacy ledger is not touched: the budget already spent stays spent.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client import logger
from federation.bundle import SiteBundle
from federation.consent import (
    RECORDS,
    SITE,
    SignedStatement,
    WithdrawalStatement,
    canonical_id,
    new_salt,
    records_digest,
    sign_statement,
)
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.home import write_private

FORMAT = "fedguard-site-consent/1"
CONSENT_PATH_KEY = "consent-path"
"""The node config key naming the consent list (default :attr:`lifecycle.home.SiteHome.consent`)."""
AUDIT_KIND = "consent-withdrawal"
"""The ``kind`` of the site audit log's line for a withdrawal statement."""


class ConsentWithdrawnError(ConfigurationError):
    """The site withdrew its consent as a whole: its agent trains, evaluates and answers nothing more.

    Its message carries no data, so the site sends it to the coordinator as
    it is (refusal code ``consent-withdrawn``, :mod:`client.refusal`).
    """


@dataclass(frozen=True)
class HistoryEntry:
    """One withdrawal as the site recorded it (the salt opens the digest it sent; ids are in the list)."""

    at: str
    scope: str
    count: int | None
    salt: str
    digest: str
    reason: str
    statement_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "scope": self.scope, "count": self.count, "salt": self.salt, "digest": self.digest,
                "reason": self.reason, "statement-sha256": self.statement_sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry:
        count = data.get("count")
        return cls(str(data["at"]), str(data["scope"]), None if count is None else int(count), str(data["salt"]),
                   str(data["digest"]), str(data["reason"]), str(data["statement-sha256"]))


@dataclass(frozen=True)
class ConsentList:
    """The site's consent list (see the module docstring)."""

    site: str
    site_withdrawn: bool = False
    excluded: frozenset[str] = frozenset()
    history: tuple[HistoryEntry, ...] = field(default=())

    @classmethod
    def read(cls, path: Path, site: str) -> ConsentList:
        """The list at ``path`` (an empty one if there is no file yet).

        Raises
        ------
        StateError
            The file may be read by group or others, cannot be read, is damaged, or belongs to another site.
        """
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            return cls(site)
        except OSError as exc:
            raise StateError(f"cannot read the site's consent list {path}: {exc.strerror or exc}") from None
        if mode & 0o077:
            raise StateError(f"the consent list {path} has permissions {mode:04o}: it holds withdrawn record ids; "
                             f"run 'chmod 600 {path}'")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            listed = cls(str(data["site"]), bool(data["site-withdrawn"]), frozenset(str(i) for i in data["excluded"]),
                         tuple(HistoryEntry.from_dict(e) for e in data["history"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"the site's consent list {path} is damaged ({exc}); restore it from a backup: "
                             "until then this site must not train") from None
        if listed.site != site:
            raise StateError(f"the consent list {path} belongs to site '{listed.site}', not '{site}'")
        return listed

    def write(self, path: Path) -> None:
        """Write the list atomically, owner-only (0600)."""
        payload = {"format": FORMAT, "site": self.site, "site-withdrawn": self.site_withdrawn,
                   "excluded": sorted(self.excluded), "history": [e.to_dict() for e in self.history]}
        try:
            write_private(path, (json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode())
        except OSError as exc:
            raise StateError(f"cannot write the site's consent list {path}: {exc.strerror or exc}; "
                             "nothing was withdrawn") from None

    def for_training(self) -> frozenset[str]:
        """The ids to exclude from this load.

        Raises
        ------
        ConsentWithdrawnError
            The whole site withdrew.
        """
        if self.site_withdrawn:
            raise ConsentWithdrawnError("this site withdrew its consent as a whole; it takes part in no further "
                                        "training, evaluation or statistics")
        return self.excluded


def excluded_records(path: Path | None, site: str) -> frozenset[str]:
    """What a load of the site's file must leave out (the ClientApp calls it before every load).

    Raises
    ------
    ConsentWithdrawnError
        The whole site withdrew: the agent refuses the message.
    StateError
        The consent list is unreadable or damaged: the agent refuses rather than guess.
    """
    if path is None:
        return frozenset()
    return ConsentList.read(path, site).for_training()


def log_in_force(path: Path, site: str) -> None:
    """Log which consent list the agent has in force and what it excludes (the agent calls it at start).

    ``fedguard client withdraw`` writes the list wherever it is told
    (``--consent``); an operator reads here whether the agent reads the same one.
    """
    try:
        listed = ConsentList.read(path, site)
    except StateError as exc:
        logger.error("consent list in force: %s cannot be used (%s); the agent refuses to train until it is fixed",
                     path, exc)
        return
    if listed.site_withdrawn:
        logger.warning("consent list in force: %s: this site withdrew its consent as a whole; the agent refuses "
                       "every message", path)
    elif not path.exists():
        logger.info("consent list in force: %s (no withdrawal yet: no record is excluded)", path)
    else:
        logger.info("consent list in force: %s: %d record(s) excluded from every load", path, len(listed.excluded))


@dataclass(frozen=True)
class SiteWithdrawal:
    """What ``fedguard client withdraw`` did: the signed statement, where it went, what the list holds now."""

    signed: SignedStatement
    statement_path: Path
    consent_path: Path
    new_ids: int
    """Ids excluded by this withdrawal that no earlier one had excluded."""
    excluded_total: int

    def to_dict(self) -> dict[str, Any]:
        return {"statement": str(self.statement_path), "consent_list": str(self.consent_path),
                "site": self.signed.statement.site, "scope": self.signed.statement.scope,
                "record_count": self.signed.statement.record_count,
                "records_digest": self.signed.statement.records_digest, "new_ids": self.new_ids,
                "excluded_total": self.excluded_total, "key": self.signed.key}


def withdraw(bundle: SiteBundle, *, reason: str, ids: Sequence[str] | None, consent_path: Path, out: Path,
             audit_log: Path, now: datetime | None = None, salt: bytes | None = None) -> SiteWithdrawal:
    """Withdraw ``ids`` (``None``: the whole site) at this site; see the module docstring for the steps.

    Raises
    ------
    StateError
        The site already withdrew as a whole (final), or a file cannot be written.
    ConfigurationError
        No ids, an empty id, or an empty reason.
    """
    from client.audit import SiteAuditLog  # Flower: only for this command

    now = now or datetime.now(UTC)
    current = ConsentList.read(consent_path, bundle.site)
    if current.site_withdrawn:
        raise StateError(f"site '{bundle.site}' already withdrew its consent as a whole "
                         f"({current.history[-1].at if current.history else 'earlier'}); that is final")
    if ids is None:
        statement = WithdrawalStatement.create(bundle.site, SITE, reason, now=now)
        entry_salt, keys = "", frozenset[str]()
    else:
        keys = frozenset(canonical_id(i) for i in ids)
        if not keys:
            raise ConfigurationError("no record id to withdraw; pass a CSV with at least one id")
        used = salt or new_salt()
        statement = WithdrawalStatement.create(bundle.site, RECORDS, reason, record_count=len(keys),
                                               records_digest=records_digest(keys, used), now=now)
        entry_salt = used.hex()
    signed = sign_statement(statement, bundle.node_key, bundle.node_public_key)
    document = signed.to_json().encode()
    entry = HistoryEntry(statement.issued_at, statement.scope, statement.record_count, entry_salt,
                         statement.records_digest, statement.reason, hashlib.sha256(document).hexdigest())
    updated = replace(current, site_withdrawn=ids is None, excluded=current.excluded | keys,
                      history=(*current.history, entry))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(document)
    except OSError as exc:
        raise StateError(f"cannot write the statement to {out} ({exc.strerror or exc}); nothing was withdrawn") \
            from None
    try:
        updated.write(consent_path)  # the withdrawal is in force at the site before the statement exists
    except StateError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    SiteAuditLog(audit_log, now=lambda: now).append_document(AUDIT_KIND, document)
    logger.info("site %s withdrew %s (%s); statement %s", bundle.site,
                "its consent as a whole" if ids is None else f"{len(keys)} record(s)", statement.reason, out)
    return SiteWithdrawal(signed, out, consent_path, len(keys - current.excluded), len(updated.excluded))
