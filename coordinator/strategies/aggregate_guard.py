"""Check each round's unmasked aggregate before it becomes the global model: retry once, then skip; stop on repeats.

Under secure aggregation a site that skips its clipping and scales its
update before masking is invisible in its own reply. What the coordinator
*can* check is the sum it unmasks: :class:`AggregateGuardStrategy` wraps the
whole stack (inside :class:`~coordinator.strategies.round_offset.RoundOffset`,
outside update validation) and, for every aggregate of a training round,

1. **bounds** (SecAgg+ and CKKS): the sum must satisfy what honest clipped
   sites imply (``Σw ≤ n·max_weight``, ``‖Σ wΔ‖₂ ≤ Σw·C`` plus the
   high-probability norm of site-level DP noise, and the same per
   coordinate: :mod:`coordinator.strategies.aggregate_bounds`). Without
   secure aggregation every update was already checked on its own
   (:mod:`coordinator.strategies.validation`), which implies these;
2. **held-out accuracy** (every mode): the new model must not lower the
   coordinator's held-out accuracy by more than ``max-accuracy-drop``.

A rejected aggregate is never returned to Flower's loop. The round is run
once more inside the same Flower round (``configure_train``, the grid
exchange and ``aggregate_train`` of every layer inside, so validation,
lineage and the ledger see it as an attempt like any other); SecAgg+ starts
a new session (fresh keys, masks and round id) and must sum **exactly the
sites of the rejected attempt, or nothing** (``required_contributors``): a
retry over one site fewer would let the coordinator subtract the two sums
and read that site's update. If the retry is rejected too, or cannot be
aggregated, the round is skipped: ``(None, None)`` keeps the global model
(Flower's ``Strategy.start`` only replaces it with non-None arrays), so
the tracker's "aggregated nothing" error, which means that no site replied,
is not raised for it. After ``max-rejected-rounds`` skipped rounds the run
stops with :class:`AggregateRejectedError` (the count starts again when a
deployed run resumes). Every rejected attempt is passed to ``on_event``
(:func:`audit_guard` writes a ``round.rejected`` audit event).

The guard never looks for the offender by aggregating subsets of the sites:
the difference of two overlapping subset sums *is* one site's update, which
secure aggregation exists to hide (docs/secure-aggregation.md).

Both attempts released an aggregate to the coordinator, so both are charged:
the retry of round ``r`` under the ledger key ``−r`` (:func:`ledger_round`),
and each site's count of rounds (its site-level ε) includes it.

Notes
-----
Input validation of secure aggregation proper needs per-site zero-knowledge
proofs that each masked input is bounded (Bell et al. 2023, "ACORN: Input
Validation for Secure Aggregation"); this guard is what can be enforced
without them. Norm bounds on the aggregate as a defence: Sun et al. 2019,
"Can You Really Backdoor Federated Learning?".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator import logger
from coordinator.strategies.aggregate_bounds import AggregateBounds, Violation
from lifecycle import audit
from lifecycle.errors import TrainingError
from lifecycle.registry import Registry
from privacy.strategy_wrapper import StrategyWrapper
from privacy.updates import flatten

ROUND_REJECTED = "round.rejected"


class AggregateRejectedError(TrainingError):
    """The aggregate guard skipped ``max-rejected-rounds`` rounds; the run stops without a model."""


class SecureSum(Protocol):
    """What the secure-aggregation layer tells the guard (``SecAggPlusStrategy``, ``CKKSStrategy``)."""

    contributors: frozenset[int]
    total_weight: float
    required_contributors: frozenset[int] | None


@dataclass(frozen=True)
class GuardEvent:
    """One rejected aggregate: which round, which attempt (1, or 2 for the retry), why, what followed."""

    server_round: int
    attempt: int
    violation: Violation
    action: str  # "retry", "skip" or "stop"


@dataclass
class Attempt:
    """Which attempt of its round the layers inside are aggregating (0: the first, 1: the retry)."""

    number: int = 0


def ledger_round(server_round: int, attempt: Attempt) -> int:
    """The privacy-ledger key of a release: the round, or ``−round`` for its retry (charged apart)."""
    return -server_round if attempt.number else server_round


@dataclass
class _Pending:
    server_round: int
    arrays: ArrayRecord
    config: ConfigRecord
    grid: Grid


class AggregateGuardStrategy(StrategyWrapper):
    """Applies a round's aggregate only if it passes the guard (see the module docstring).

    Parameters
    ----------
    inner : Strategy
        The rest of the stack (update validation and everything inside it).
    bounds : AggregateBounds or None
        The bounds on the sum; None without secure aggregation (each update was checked on its own).
    secure_sum : SecureSum or None
        The secure-aggregation layer inside: who was summed, ``Σw``, and the lock a retry sets.
    accuracy : callable or None
        The held-out accuracy of a candidate global model; None disables the accuracy check.
    max_accuracy_drop : float
        Largest drop of held-out accuracy a round may cause (1 disables the check).
    max_rejected_rounds : int
        Skipped rounds after which the run stops with :class:`AggregateRejectedError`.
    timeout : float
        Seconds the retry waits for the sites' replies (the round timeout).
    attempt : Attempt
        Shared with the ledger's charge callback (:func:`ledger_round`).
    on_event : callable or None
        Receives every rejected aggregate (e.g. :func:`audit_guard`).
    on_discard : callable or None
        ``on_discard(round)`` for an attempt that aggregated but was rejected (the tracker un-counts it).
    """

    def __init__(
        self, inner: Strategy, *, bounds: AggregateBounds | None = None, secure_sum: SecureSum | None = None,
        accuracy: Callable[[ArrayRecord], float] | None = None, max_accuracy_drop: float = 0.1,
        max_rejected_rounds: int = 2, timeout: float = 600.0, attempt: Attempt | None = None,
        on_event: Callable[[GuardEvent], None] | None = None, on_discard: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.bounds, self.secure_sum, self.accuracy = bounds, secure_sum, accuracy
        self.max_accuracy_drop, self.max_rejected_rounds, self.timeout = max_accuracy_drop, max_rejected_rounds, timeout
        self.attempt = attempt if attempt is not None else Attempt()
        self.on_event, self.on_discard = on_event, on_discard
        self.events: list[GuardEvent] = []
        self.skipped: list[tuple[int, Violation]] = []
        self._pending: _Pending | None = None
        self._known: tuple[ArrayRecord, float] | None = None  # the last model evaluated, and its accuracy

    def __getattr__(self, name: str) -> Any:  # the tracker's ``sites``, ``rounds_aggregated``, …
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._pending, self.attempt.number = _Pending(server_round, arrays, config, grid), 0
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        pending, self._pending = self._pending, None
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if pending is None or arrays is None or pending.server_round != server_round:
            return arrays, metrics
        violation = self._judge(pending, arrays)
        if violation is None:
            return arrays, metrics
        self._reject(GuardEvent(server_round, 1, violation, "retry"), discard=True)
        arrays, metrics, violation = self._retry(pending)
        if violation is None:
            logger.warning("round %d: the retry's aggregate passed the guard and is applied", server_round)
            return arrays, metrics
        self.skipped.append((server_round, violation))
        stop = len(self.skipped) >= self.max_rejected_rounds
        self._reject(GuardEvent(server_round, 2, violation, "stop" if stop else "skip"), discard=arrays is not None)
        if stop:
            raise AggregateRejectedError(self.report())
        return None, None

    def report(self) -> str:
        """Which rounds were skipped, which bound each broke, and what to do."""
        rounds = "; ".join(f"round {r}: {v.describe()}" for r, v in self.skipped)
        return (
            f"the aggregate guard rejected {len(self.skipped)} round(s) (max-rejected-rounds = "
            f"{self.max_rejected_rounds}), each after a retry with fresh masks — {rounds}. None of these aggregates "
            "was applied and no model was published. A bound on the sum means that some site sent an update "
            "outside what honest clipped sites can produce (modified or broken site software); secure aggregation "
            "hides which site, by design. Check every site's software and local audit log (audit events "
            f"'{ROUND_REJECTED}' on the coordinator), remove or re-enrol the suspect site, and run again. An "
            "accuracy drop alone may also come from heavy DP noise: then raise max-accuracy-drop "
            "(docs/secure-aggregation.md)"
        )

    # ------------------------------------------------------------------ steps
    def _judge(self, pending: _Pending, arrays: ArrayRecord) -> Violation | None:
        if self.bounds is not None and self.secure_sum is not None:
            before, _ = flatten(pending.arrays)
            after, _ = flatten(arrays)
            summed = self.secure_sum
            violation = self.bounds.check(before, after, summed.total_weight, len(summed.contributors))
            if violation is not None:
                return violation
        if self.accuracy is None or self.max_accuracy_drop >= 1:
            return None
        baseline, candidate = self._accuracy_of(pending.arrays), self._accuracy_of(arrays)
        if baseline - candidate > self.max_accuracy_drop:
            return Violation("accuracy", baseline - candidate, self.max_accuracy_drop,
                             f"{baseline:.3f} → {candidate:.3f} on the held-out set")
        return None

    def _accuracy_of(self, arrays: ArrayRecord) -> float:
        if self._known is not None and self._known[0] is arrays:  # Flower hands the accepted record back
            return self._known[1]
        assert self.accuracy is not None
        value = self.accuracy(arrays)
        self._known = (arrays, value)
        return value

    def _retry(self, pending: _Pending) -> tuple[ArrayRecord | None, MetricRecord | None, Violation | None]:
        """The round once more, with fresh masks, over exactly the sites the rejected attempt summed."""
        lock, r = self.secure_sum, pending.server_round
        if lock is not None:
            lock.required_contributors = lock.contributors
        self.attempt.number = 1
        try:
            messages = list(self.inner.configure_train(r, pending.arrays, pending.config, pending.grid))
            replies = pending.grid.send_and_receive(messages, timeout=self.timeout)
            arrays, metrics = self.inner.aggregate_train(r, replies)
        except TrainingError as exc:
            return None, None, Violation("retry-failed", 0.0, 0.0, str(exc))
        finally:
            self.attempt.number = 0
            if lock is not None:
                lock.required_contributors = None
        if arrays is None:
            return None, None, Violation("retry-failed", 0.0, 0.0, "it aggregated nothing")
        return arrays, metrics, self._judge(pending, arrays)

    def _reject(self, event: GuardEvent, *, discard: bool) -> None:
        self.events.append(event)
        logger.warning("round %d, attempt %d: aggregate rejected (%s); %s", event.server_round, event.attempt,
                       event.violation.describe(), {"retry": "retrying with fresh masks",
                                                    "skip": "the round is skipped, the global model stays",
                                                    "stop": "the run stops"}[event.action])
        if discard and self.on_discard is not None:
            self.on_discard(event.server_round)
        if self.on_event is not None:
            self.on_event(event)


def audit_guard(registry: Registry, run_id: str) -> Callable[[GuardEvent], None]:
    """An ``on_event`` that appends a ``round.rejected`` event to the registry's audit trail (no update values)."""

    def on_event(event: GuardEvent) -> None:
        v = event.violation
        with registry.transaction() as session:
            audit.record(session, ROUND_REJECTED, actor="coordinator", subject=f"{run_id}/round-{event.server_round}",
                         details={"run": run_id, "round": event.server_round, "attempt": event.attempt,
                                  "bound": v.bound, "measured": v.measured, "limit": v.limit,
                                  "reason": v.describe(), "action": event.action})

    return on_event
