"""The in-process :class:`~serving.guards.quotas.base.QuotaStore` (the default).

State lives in a dict guarded by one lock, so it is exact across the threads
of one process, but each replica counts on its own: with several replicas,
use the Redis store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from serving.guards.quotas.base import DAY_SECONDS, Decision, LimitsFor, QuotaLimits, QuotaStore, day_end


@dataclass
class _Counters:
    tokens: float
    stamp: float
    day: int
    used: int


class MemoryQuotaStore(QuotaStore):
    """Token buckets and daily counters in this process's memory."""

    def __init__(self, limits_for: LimitsFor) -> None:
        super().__init__(limits_for)
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], _Counters] = {}
        self._throttles: dict[str, tuple[float, int, float]] = {}

    def throttle(self, key_id: str, rate: float, burst: int, until: float) -> None:
        with self._lock:
            self._throttles[key_id] = (rate, burst, until)

    def consume(self, key_id: str, model: str, cost: int, now: float) -> Decision:
        limits = self.limits_for(key_id, model)
        day = int(now // DAY_SECONDS)
        with self._lock:
            throttle = self._throttles.get(key_id)
            if throttle is not None and now < throttle[2]:
                limits = QuotaLimits(min(limits.rate, throttle[0]), min(limits.burst, throttle[1]),
                                     limits.daily_budget)
            state = self._state.setdefault((key_id, model), _Counters(float(limits.burst), now, day, 0))
            if now > state.stamp:
                state.tokens = min(float(limits.burst), state.tokens + (now - state.stamp) * limits.rate)
                state.stamp = now
            state.tokens = min(state.tokens, float(limits.burst))
            if day != state.day:
                state.day, state.used = day, 0
            remaining = limits.daily_budget - state.used
            if cost > remaining:
                return Decision(False, day_end(now) - now, remaining)
            if state.tokens < 1.0:
                return Decision(False, (1.0 - state.tokens) / limits.rate, remaining)
            state.tokens -= 1.0
            state.used += cost
            return Decision(True, 0.0, remaining - cost)
