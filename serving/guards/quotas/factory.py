"""Build the configured :class:`~serving.guards.quotas.base.QuotaStore` from the settings.

Limits are resolved per ``(key_id, model)``: the defaults
(``FEDGUARD_SERVE_QUOTA_RATE``, ``_QUOTA_BURST``, ``_QUOTA_DAILY_BUDGET``),
overridden field by field by ``FEDGUARD_SERVE_MODEL_QUOTAS[model]``, then by
``FEDGUARD_SERVE_KEY_QUOTAS[key_id]`` (both JSON objects), so that a key's
own limit wins over its model's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from lifecycle.errors import ConfigurationError
from serving.guards.quotas.base import LimitsFor, QuotaLimits, QuotaStore
from serving.guards.quotas.memory import MemoryQuotaStore

if TYPE_CHECKING:
    from serving.settings import ServingSettings

BACKENDS = ("memory", "redis")


def limits_resolver(settings: ServingSettings) -> LimitsFor:
    """The ``(key_id, model) -> QuotaLimits`` function the settings describe (cached)."""

    @lru_cache(maxsize=4096)
    def limits_for(key_id: str, model: str) -> QuotaLimits:
        values = {"rate": settings.quota_rate, "burst": settings.quota_burst,
                  "daily_budget": settings.quota_daily_budget}
        for override in (settings.model_quotas.get(model), settings.key_quotas.get(key_id)):
            if override is not None:
                values.update(override.model_dump(exclude_none=True))
        return QuotaLimits(rate=float(values["rate"]), burst=int(values["burst"]),
                           daily_budget=int(values["daily_budget"]))

    return limits_for


def create_quota_store(settings: ServingSettings) -> QuotaStore:
    """The store ``settings.quota_backend`` names (``memory`` or ``redis``).

    Raises
    ------
    ConfigurationError
        Unknown backend.
    StateError
        The Redis backend is configured but unreachable: the server refuses to
        start rather than serve without its quotas.
    """
    limits_for = limits_resolver(settings)
    if settings.quota_backend == "memory":
        return MemoryQuotaStore(limits_for)
    if settings.quota_backend == "redis":
        from serving.guards.quotas.redis import RedisQuotaStore

        store = RedisQuotaStore(limits_for, settings.redis_url, settings.quota_prefix)
        store.ping()
        return store
    raise ConfigurationError(f"unknown quota backend '{settings.quota_backend}'; use one of: {', '.join(BACKENDS)}")
