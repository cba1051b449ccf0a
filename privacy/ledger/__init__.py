"""The persistent privacy ledger: per-site ε charges, composed across rounds and runs, capped.

See :mod:`privacy.ledger.base` for the model, :mod:`privacy.ledger.sql` for
the SQLite and PostgreSQL implementations, :mod:`privacy.ledger.factory` to
open one, and :mod:`privacy.ledger.guard` for the coordinator's admission
and the site's veto.
"""

from privacy.ledger.base import (
    ANY,
    KINDS,
    Cap,
    Charge,
    LedgerConflictError,
    LedgerSummary,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    Projection,
)
from privacy.ledger.factory import SiteLedger, coordinator_ledger, ledger_for
from privacy.ledger.sql import PostgresLedger, SQLiteLedger, SqlLedger
from privacy.ledger.tables import LedgerEntry, SiteCap

__all__ = [
    "ANY", "KINDS", "Cap", "Charge", "LedgerConflictError", "LedgerEntry", "LedgerSummary",
    "PostgresLedger", "PrivacyBudgetExceeded", "PrivacyLedger", "Projection", "SQLiteLedger",
    "SiteCap", "SiteLedger", "SqlLedger", "coordinator_ledger", "ledger_for",
]
