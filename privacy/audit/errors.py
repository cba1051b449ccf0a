"""The audit's one error: an empirical lower bound above the claimed ε."""

from __future__ import annotations

from lifecycle.errors import VerificationError


class PrivacyAuditFailed(VerificationError):
    """ε̂ > ε: the run leaked more than its ledger says it could (exit 5).

    A valid lower bound can only exceed a correct upper bound with the
    audit's error probability (5 % at 95 % confidence), so this almost
    surely means a bug: noise not added, a site's ε mis-accounted, clipping
    skipped. The message names both numbers and what to check.
    """
