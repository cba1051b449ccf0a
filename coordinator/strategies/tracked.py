"""The wrapper that knows who took part in each round and fails loudly.

Flower's Message-API strategies quietly carry on when every site of a round
fails (the run still "succeeds" with the old weights). fedguard wraps the
chosen strategy: a round that aggregates nothing raises :class:`TrainingError`
with the sites' reasons, and each valid reply's ``site`` record (name, data
manifest, ε spent, DP parameters: public metadata, never the update) is kept
for the ML-BOM and the registry, under the site's *enrolled* identity
(``identify``, :meth:`coordinator.ledger.RunLedger.verify`): a reply whose
reported name is not its node's identity is refused before aggregation (an
error reply, code :data:`IDENTITY_REFUSED`: secure aggregation treats the site
as dropped) and never enters the lineage. The wrapper sits outside the
protection layers, so it sees the sites' replies whatever protection (secure
aggregation, CKKS) sits inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord, Error, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from coordinator import logger
from coordinator.reasons import IDENTITY_REFUSED, UNNAMED, describe, reason_of
from coordinator.strategies.validation import UPDATE_REJECTED
from federation.protocol import METRICS_RECORD, ProtocolError, SiteReply, TrainMetrics
from lifecycle.errors import TrainingError
from privacy.records import metric_record
from privacy.strategy_wrapper import StrategyWrapper

__all__ = ["IDENTITY_REFUSED", "Identities", "RoundReport", "SiteLedger", "TrackedStrategy"]


class Identities(Protocol):
    """Who each node is (:class:`coordinator.ledger.RunLedger` answers from ``coordinator.identity``)."""

    def verify(self, node_id: int, reported: str | None) -> str | None:
        """The identity to credit ``node_id``'s reply naming ``reported`` to; None: refused for the run."""

    def enrolled(self, node_id: int) -> str | None:
        """The node's enrolled identity, when it has one (nothing is refused by asking)."""


@dataclass
class SiteLedger:
    """What one site contributed over the run (latest report wins for ε)."""

    name: str
    num_examples: int = 0
    manifest: str = ""
    rounds: int = 0
    dp: dict[str, Any] = field(default_factory=dict)
    site_dp: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    secure_rng: bool = False
    device: str = ""  # where the site trained, as it reported (client.device.describe)


@dataclass(frozen=True)
class RoundReport:
    """One round's participation, passed to the observer.

    ``failed`` holds one ``"name: reason"`` line per failed reply (the site's
    enrolled name, :mod:`coordinator.reasons`); ``reasons`` the same by name.
    """

    server_round: int
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]
    rejected: tuple[str, ...] = ()  # among ``failed``: malformed updates the coordinator refused
    reasons: dict[str, str] = field(default_factory=dict)


class TrackedStrategy(StrategyWrapper):
    """Wraps a strategy: records site lineage from replies and refuses empty rounds."""

    def __init__(
        self, inner: Strategy, *, on_round: Callable[[RoundReport], None] | None = None,
        on_aggregated: Callable[[int, list[Message]], None] | None = None, identities: Identities | None = None,
    ) -> None:
        super().__init__(inner)
        self.on_aggregated = on_aggregated
        self.identities = identities
        self.sites: dict[str, SiteLedger] = {}
        self._names: dict[int, str] = {}  # node id → the identity its replies are credited to
        self._unnamed: dict[int, int] = {}  # node id → its number among nodes without an identity
        self.on_round = on_round
        self.rounds_aggregated = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [self._screen(server_round, m) for m in replies]
        reasons = {self._name_of(m): reason_of(m.error) for m in replies if m.has_error()}
        failed = [describe(name, refusal) for name, refusal in reasons.items()]
        rejected = [describe(self._name_of(m), reason_of(m.error)) for m in replies
                    if m.has_error() and m.error.code in (UPDATE_REJECTED, IDENTITY_REFUSED)]
        succeeded = [self._record(m) for m in replies if not m.has_error()]
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        except TrainingError:
            raise
        except Exception as exc:  # an aggregation rule rejecting malformed replies, a secure sum aborting
            why = f"; sites that failed: {'; '.join(failed)}" if failed else ""
            raise TrainingError(f"round {server_round} could not be aggregated: {exc}{why}") from exc
        if arrays is None:
            summary = "; ".join(failed[:3]) or "no site replied before the round timeout"
            raise TrainingError(
                f"round {server_round} aggregated nothing ({len(failed)} site(s) failed: {summary}); "
                "check the sites' logs and data, then run again"
            )
        self.rounds_aggregated += 1
        if self.on_aggregated is not None:
            self.on_aggregated(server_round, [m for m in replies if not m.has_error()])
        for message in failed:
            logger.warning("round %d: %s", server_round, message)
        if self.on_round is not None:
            self.on_round(RoundReport(server_round, tuple(succeeded), tuple(failed), tuple(rejected),
                                      {name: refusal.message for name, refusal in reasons.items()}))
        return arrays, metrics

    def discard(self, server_round: int) -> None:
        """Un-count an aggregated attempt of ``server_round`` that the aggregate guard then rejected.

        It is not a round of the model (the global model stayed), but its
        replies stay recorded: the sites did release them, so their lineage,
        round counts and ε keep them (``coordinator.strategies.aggregate_guard``).
        A round the guard skips is therefore not one that "aggregated nothing".
        """
        self.rounds_aggregated -= 1
        logger.info("round %d: an aggregate rejected by the guard is not counted as a model round", server_round)

    def enrolled_name(self, node_id: int) -> str | None:
        """The identity a node's contributions are credited to (None: refused, or not known yet)."""
        if node_id in self._names:
            return self._names[node_id]
        return self.identities.enrolled(node_id) if self.identities is not None else None

    def _name_of(self, message: Message) -> str:
        """The enrolled name of a reply's node, for the operator (never its Flower node id)."""
        node = int(message.metadata.src_node_id)
        name = self.enrolled_name(node)
        if name is not None:
            return name
        number = self._unnamed.setdefault(node, len(self._unnamed) + 1)
        return f"{UNNAMED} #{number}"

    def _screen(self, server_round: int, message: Message) -> Message:
        """``message``, or an error reply when its site record is malformed or names another site."""
        if message.has_error():
            return message
        node = int(message.metadata.src_node_id)
        try:
            site = SiteReply.of(message)
        except ProtocolError as exc:
            logger.warning("round %d: node %d sent a malformed site record: %s", server_round, node, exc)
            return _refused(message, str(exc))
        reported = site.name if site is not None else None
        name = self.identities.verify(node, reported) if self.identities is not None else (reported or f"node-{node}")
        if name is None:
            return _refused(message, "refused: the reply names a site that is not this node's enrolled identity")
        self._names[node] = name
        return message

    def _record(self, message: Message) -> str:
        content = message.content
        node = int(message.metadata.src_node_id)
        site = SiteReply.of(message)  # well formed: screened
        name = self._names[node]
        ledger = self.sites.setdefault(name, SiteLedger(name))
        ledger.rounds += 1
        metrics = metric_record(content, METRICS_RECORD)
        if metrics is not None:
            ledger.num_examples = TrainMetrics.num_examples_of(metrics)
        if site is not None:
            ledger.manifest = site.manifest
            ledger.secure_rng = site.secure_rng
            ledger.device = site.device
            ledger.dp = site.lineage_dp()
            ledger.site_dp = dict(site.site_dp)
        return name


def _refused(message: Message, reason: str) -> Message:
    """An error reply in place of ``message`` (same metadata), as Flower records a failed node."""
    build: Any = Message  # the metadata-keeping constructor is not in Flower's typed overloads
    reply: Message = build(metadata=message.metadata, error=Error(code=IDENTITY_REFUSED, reason=reason))
    return reply
