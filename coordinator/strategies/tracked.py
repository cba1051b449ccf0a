"""The wrapper that knows who took part in each round and fails loudly.

Flower's Message-API strategies quietly carry on when every site of a round
fails (the run still "succeeds" with the old weights). fedguard wraps the
chosen strategy: a round that aggregates nothing raises :class:`TrainingError`
with the sites' reasons, and each valid reply's ``site`` record (name, data
manifest, ε spent, DP parameters: public metadata, never the update) is kept
for the ML-BOM and the registry. The wrapper sits outermost, so it sees the
sites' replies whatever protection (secure aggregation, CKKS) sits inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from coordinator import logger
from coordinator.strategies.validation import UPDATE_REJECTED
from lifecycle.errors import TrainingError
from privacy.strategy_wrapper import StrategyWrapper


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
    """One round's participation, passed to the observer."""

    server_round: int
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]
    rejected: tuple[str, ...] = ()  # among ``failed``: malformed updates the coordinator refused


class TrackedStrategy(StrategyWrapper):
    """Wraps a strategy: records site lineage from replies and refuses empty rounds."""

    def __init__(
        self, inner: Strategy, *, on_round: Callable[[RoundReport], None] | None = None,
        on_aggregated: Callable[[int, list[Message]], None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.on_aggregated = on_aggregated
        self.sites: dict[str, SiteLedger] = {}
        self.on_round = on_round
        self.rounds_aggregated = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
        rejected = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies
                    if m.has_error() and m.error.code == UPDATE_REJECTED]
        succeeded = [self._record(m) for m in replies if not m.has_error()]
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        except TrainingError:
            raise
        except Exception as exc:  # an aggregation rule rejecting malformed replies
            raise TrainingError(f"round {server_round} could not be aggregated: {exc}") from exc
        if arrays is None:
            reasons = "; ".join(failed[:3]) or "no site replied before the round timeout"
            raise TrainingError(
                f"round {server_round} aggregated nothing ({len(failed)} site(s) failed: {reasons}); "
                "check the sites' logs and data, then run again"
            )
        self.rounds_aggregated += 1
        if self.on_aggregated is not None:
            self.on_aggregated(server_round, [m for m in replies if not m.has_error()])
        for message in failed:
            logger.warning("round %d: %s", server_round, message)
        if self.on_round is not None:
            self.on_round(RoundReport(server_round, tuple(succeeded), tuple(failed), tuple(rejected)))
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

    def _record(self, message: Message) -> str:
        content = message.content
        site = content.config_records.get("site")
        name = str(site["name"]) if site is not None else f"node-{message.metadata.src_node_id}"
        ledger = self.sites.setdefault(name, SiteLedger(name))
        ledger.rounds += 1
        metrics = content.metric_records.get("metrics")
        if metrics is not None:
            ledger.num_examples = int(metrics["num-examples"])  # type: ignore[arg-type]
        if site is not None:
            ledger.manifest = str(site.get("manifest", ""))
            ledger.secure_rng = bool(site.get("secure-rng", False))
            ledger.device = str(site.get("device", ""))
            ledger.dp = {
                key: site[key] for key in
                ("epsilon", "delta", "noise-multiplier", "sample-rate", "steps", "max-grad-norm", "accountant",
                 "clipping")
                if key in site
            }
            ledger.site_dp = {
                key.removeprefix("site-dp-"): site[key] for key in site.keys() if key.startswith("site-dp-")
            }
        return name
