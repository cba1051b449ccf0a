"""Empirical privacy audits: membership inference and the one-run ε lower bound (pure math, no torch).

:mod:`privacy.audit.one_run` turns canary guesses into an ε lower bound
(Steinke, Nasr & Jagielski 2023); :mod:`privacy.audit.mia` scores
membership from per-example losses or confidences (Yeom et al. 2018,
Carlini et al. 2022); :mod:`privacy.audit.metrics` reports ROC, AUC and
TPR at low FPR; :mod:`privacy.audit.errors` is the loud failure.
"""

from privacy.audit.errors import PrivacyAuditFailed
from privacy.audit.one_run import (
    CONFIDENCE,
    AuditResult,
    audit,
    epsilon_lower_bound,
    p_value,
    raise_if_failed,
)

__all__ = ["CONFIDENCE", "AuditResult", "PrivacyAuditFailed", "audit", "epsilon_lower_bound", "p_value",
           "raise_if_failed"]
