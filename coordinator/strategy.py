"""FedAvg that knows who took part: per-site lineage and loud failure.

Flower's ``FedAvg`` quietly carries on when every site of a round fails (the
run still "succeeds" with the old weights). fedguard wraps it: a round that
aggregates nothing raises :class:`TrainingError` with the sites' reasons, and
each valid reply's ``site`` record (name, data manifest, ε spent, DP
parameters) is kept for the ML-BOM and the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from coordinator import logger
from lifecycle.errors import TrainingError


@dataclass
class SiteLedger:
    """What one site contributed over the run (latest report wins for ε)."""

    name: str
    num_examples: int = 0
    manifest: str = ""
    rounds: int = 0
    dp: dict[str, Any] = field(default_factory=dict)
    secure_rng: bool = False


@dataclass(frozen=True)
class RoundReport:
    """One round's participation, passed to the observer."""

    server_round: int
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]


class TrackedFedAvg(FedAvg):
    """``FedAvg`` that records site lineage and refuses empty rounds."""

    def __init__(self, *, on_round: Callable[[RoundReport], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sites: dict[str, SiteLedger] = {}
        self.on_round = on_round
        self.rounds_aggregated = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
        succeeded = [self._record(m) for m in replies if not m.has_error()]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            reasons = "; ".join(failed[:3]) or "no site replied before the round timeout"
            raise TrainingError(
                f"round {server_round} aggregated nothing ({len(failed)} site(s) failed: {reasons}); "
                "check the sites' logs and data, then run again"
            )
        self.rounds_aggregated += 1
        for message in failed:
            logger.warning("round %d: %s", server_round, message)
        if self.on_round is not None:
            self.on_round(RoundReport(server_round, tuple(succeeded), tuple(failed)))
        return arrays, metrics

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
            ledger.dp = {
                key: site[key] for key in
                ("epsilon", "delta", "noise-multiplier", "sample-rate", "steps", "max-grad-norm", "accountant")
                if key in site
            }
        return name
