"""The quota interface: limits, decisions, and the :class:`QuotaStore` contract.

Two limits apply to every (API key, model) pair, checked together and
atomically by :meth:`QuotaStore.consume`:

- a **token bucket** (``rate`` tokens per second, at most ``burst`` stored):
  each request takes one token, so bursts are bounded and the long-run request
  rate is ``rate``;
- a **daily budget** of instances (UTC days): each request takes as many units
  as it carries instances, which bounds how many answers a key can harvest per
  day whatever its request rate.

A refused request consumes nothing. Time is passed in (``now``, seconds since
the epoch) so that tests never sleep and replicas agree on a day boundary.

Notes
-----
Query budgets are the standard defence against model extraction through a
prediction API (Tramèr et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016): extraction cost grows with the number
of queries, so bounding queries per key per day bounds what one key can steal.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from lifecycle.errors import ConfigurationError, FedguardError

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class QuotaLimits:
    """The limits of one (key, model) pair.

    Attributes
    ----------
    rate
        Tokens added to the bucket per second (> 0).
    burst
        Bucket capacity: the most requests accepted back to back (>= 1).
    daily_budget
        Instances that may be predicted per UTC day (>= 0).
    """

    rate: float
    burst: int
    daily_budget: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1 or self.daily_budget < 0:
            raise ConfigurationError(
                f"invalid quota limits {self}: need rate > 0, burst >= 1, daily_budget >= 0"
            )


@dataclass(frozen=True)
class Decision:
    """The answer to one :meth:`QuotaStore.consume` call.

    Attributes
    ----------
    allowed
        Whether the request may proceed (and was charged).
    retry_after
        Seconds until a retry can succeed (0 when allowed).
    remaining
        Instances left in today's budget, after this request if allowed.
    """

    allowed: bool
    retry_after: float
    remaining: int


class QuotaExceeded(FedguardError, RuntimeError):
    """A key is over its rate limit or its daily budget (HTTP 429 with ``Retry-After``).

    The message is for the operator's log; the caller sees a generic one.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


LimitsFor = Callable[[str, str], QuotaLimits]
"""Resolves the limits of ``(key_id, model)``; see :func:`serving.guards.quotas.policy.limits_resolver`."""


def day_end(now: float) -> float:
    """The start of the UTC day after the one holding ``now``."""
    return (math.floor(now / DAY_SECONDS) + 1) * DAY_SECONDS


class QuotaStore(ABC):
    """Where the buckets and daily counters live; every implementation passes one contract suite.

    Parameters
    ----------
    limits_for
        Returns the :class:`QuotaLimits` of a ``(key_id, model)`` pair.
    """

    def __init__(self, limits_for: LimitsFor) -> None:
        self.limits_for = limits_for

    @abstractmethod
    def consume(self, key_id: str, model: str, cost: int, now: float) -> Decision:
        """Atomically take 1 token and ``cost`` instances of budget, or nothing.

        Parameters
        ----------
        key_id, model
            The pair whose limits apply.
        cost
            Instances in the request (>= 1).
        now
            The current time, seconds since the epoch.

        Raises
        ------
        StateError
            The backing store cannot be reached (HTTP 503).
        """

    @abstractmethod
    def throttle(self, key_id: str, rate: float, burst: int, until: float) -> None:
        """Lower ``key_id``'s limits on every model to at most ``rate``/``burst`` until ``until``.

        Used by the extraction guard (:mod:`serving.guards.extraction`). The lowered
        limits apply from the next :meth:`consume` at a ``now`` before
        ``until``; a bucket holding more than ``burst`` tokens is cut to
        ``burst``. The daily budget is unchanged. A later call replaces an
        earlier one.

        Raises
        ------
        StateError
            The backing store cannot be reached.
        """

    def close(self) -> None:  # noqa: B027 - a no-op default on purpose: only stores with connections override it
        """Release connections, if any."""
