"""Leave out of a round every site the privacy ledger projects over its cap, and every node refused for the run."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.ledger import RunLedger
from lifecycle.errors import TrainingError
from privacy.strategy_wrapper import StrategyWrapper


class AdmissionStrategy(StrategyWrapper):
    """Drops, from each round's sampled messages, refused nodes and sites the ledger projects over their cap.

    Sits directly around the aggregation rule, *inside* secure aggregation,
    so a left-out site is never part of the round's protocol.
    """

    def __init__(self, inner: Strategy, run_ledger: RunLedger) -> None:
        super().__init__(inner)
        self.run_ledger = run_ledger

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        admitted = [m for m in messages if not self.run_ledger.refused(m.metadata.dst_node_id)
                    and not self.run_ledger.over_cap(m.metadata.dst_node_id)]
        if messages and not admitted:
            raise TrainingError(
                f"round {server_round}: every sampled site is at its privacy cap or was refused for this run "
                "(identity); see 'fedguard privacy ledger' and the audit trail"
            )
        return admitted
