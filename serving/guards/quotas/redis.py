"""The Redis :class:`~serving.guards.quotas.base.QuotaStore`: one count shared by every replica.

Each decision is one Lua script, which Redis runs atomically, so concurrent
requests on any number of replicas are refused exactly past the limit. Keys
are ``<prefix><key_id>|<model>|bucket`` (a hash: tokens and their time stamp)
and ``<prefix><key_id>|<model>|day|<n>`` (an integer), both with an expiry so
idle pairs disappear, and ``<prefix><key_id>|throttle`` (a hash: the lowered
rate, burst and the instant they end) for a key the extraction guard flagged.
Float values cross the script boundary as strings (Redis truncates Lua
numbers to integers), written with 17 significant digits so that they
round-trip exactly.
"""

from __future__ import annotations

import math

import redis as redis_client
from redis.exceptions import RedisError

from lifecycle.errors import StateError
from serving.guards.quotas.base import DAY_SECONDS, Decision, LimitsFor, QuotaStore, day_end

CONSUME = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, budget, until_day_end = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local bucket_ttl = tonumber(ARGV[7])
local function exact(x) return string.format('%.17g', x) end
local throttle = redis.call('HMGET', KEYS[3], 'rate', 'burst', 'until')
if throttle[3] and now < tonumber(throttle[3]) then
  rate, burst = math.min(rate, tonumber(throttle[1])), math.min(burst, tonumber(throttle[2]))
end
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(saved[1]), tonumber(saved[2])
if tokens == nil or stamp == nil then tokens, stamp = burst, now end
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate)
  stamp = now
end
tokens = math.min(tokens, burst)
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local remaining = budget - used
if cost > remaining then return {0, exact(until_day_end), remaining} end
if tokens < 1 then return {0, exact((1 - tokens) / rate), remaining} end
redis.call('HSET', KEYS[1], 'tokens', exact(tokens - 1), 'stamp', exact(stamp))
redis.call('EXPIRE', KEYS[1], bucket_ttl)
redis.call('INCRBY', KEYS[2], cost)
redis.call('EXPIRE', KEYS[2], math.ceil(until_day_end) + 3600)
return {1, '0', remaining - cost}
"""


THROTTLE_TTL = 30 * DAY_SECONDS


class RedisQuotaStore(QuotaStore):
    """Token buckets and daily counters in Redis, shared by replicas.

    Parameters
    ----------
    limits_for
        Limits per ``(key_id, model)``.
    url
        ``redis://host:port/db``.
    prefix
        Prepended to every Redis key (tests use a unique one each).
    """

    def __init__(self, limits_for: LimitsFor, url: str, prefix: str = "fedguard:quota:") -> None:
        super().__init__(limits_for)
        self.url, self.prefix = url, prefix
        self._redis = redis_client.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._consume = self._redis.register_script(CONSUME)

    def _keys(self, key_id: str, model: str, now: float) -> list[str]:
        base = f"{self.prefix}{key_id}|{model}|"
        return [base + "bucket", f"{base}day|{int(now // DAY_SECONDS)}", self._throttle_key(key_id)]

    def _throttle_key(self, key_id: str) -> str:
        return f"{self.prefix}{key_id}|throttle"

    def throttle(self, key_id: str, rate: float, burst: int, until: float) -> None:
        name = self._throttle_key(key_id)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"rate": repr(float(rate)), "burst": int(burst), "until": repr(float(until))})
                # Expiry only collects the key; the decision compares 'until' with the caller's clock.
                pipe.expire(name, THROTTLE_TTL)
                pipe.execute()
        except RedisError as exc:
            raise StateError(f"quota store at {self._safe_url()} failed: {type(exc).__name__}: {exc}") from exc

    def consume(self, key_id: str, model: str, cost: int, now: float) -> Decision:
        limits = self.limits_for(key_id, model)
        bucket_ttl = math.ceil(limits.burst / limits.rate) + 60
        args: list[str | int] = [repr(float(now)), repr(limits.rate), limits.burst, cost, limits.daily_budget,
                repr(day_end(now) - now), min(bucket_ttl, 10 * DAY_SECONDS)]
        try:
            allowed, retry_after, remaining = self._consume(keys=self._keys(key_id, model, now), args=args)
        except RedisError as exc:
            raise StateError(f"quota store at {self._safe_url()} failed: {type(exc).__name__}: {exc}") from exc
        return Decision(bool(allowed), float(retry_after), int(remaining))

    def _safe_url(self) -> str:
        return self.url.split("@")[-1]

    def ping(self) -> None:
        """Check the server answers.

        Raises
        ------
        StateError
            It does not; the message names the address.
        """
        try:
            self._redis.ping()
        except RedisError as exc:
            raise StateError(
                f"cannot reach the Redis quota store at {self._safe_url()}: {exc}; start Redis or set "
                "FEDGUARD_SERVE_QUOTA_BACKEND=memory"
            ) from exc

    def clear(self) -> int:
        """Delete every key under this store's prefix; return how many (tests, operators)."""
        names = list(self._redis.scan_iter(match=f"{self.prefix}*", count=500))
        return int(self._redis.delete(*names)) if names else 0

    def close(self) -> None:
        self._redis.close()
