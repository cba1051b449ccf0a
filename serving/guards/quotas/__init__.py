"""Per-key, per-model quotas: a token-bucket rate limit and a daily instance budget.

A stateful service as a folder (DESIGN.md §7.2): the interface in
:mod:`~serving.guards.quotas.base`, an in-process store in :mod:`~serving.guards.quotas.memory`,
a Redis store shared by replicas in :mod:`~serving.guards.quotas.redis`, and
:func:`create_quota_store` choosing between them from the settings. One
contract suite (``tests/serving/quotas``) runs against each.
"""

from serving.guards.quotas.base import Decision, QuotaExceeded, QuotaLimits, QuotaStore
from serving.guards.quotas.factory import create_quota_store, limits_resolver
from serving.guards.quotas.memory import MemoryQuotaStore

__all__ = [
    "Decision",
    "MemoryQuotaStore",
    "QuotaExceeded",
    "QuotaLimits",
    "QuotaStore",
    "create_quota_store",
    "limits_resolver",
]
