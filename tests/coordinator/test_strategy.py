"""The tracking wrapper and the robust aggregation rules, on real Flower messages."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from coordinator.strategies.aggregation import create_aggregation
from coordinator.strategies.tracked import TrackedStrategy
from lifecycle.errors import ConfigurationError, TrainingError


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; give this process one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _request(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int, value: float, site: str) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))}),
        "metrics": MetricRecord({"num-examples": 10}),
        "site": ConfigRecord({"name": site, "manifest": "ab" * 32, "epsilon": 1.25}),
    })
    return Message(content, reply_to=_request(node))


def _failure(node: int) -> Message:
    return Message(Error(code=0, reason="label 7 is not a class index"), reply_to=_request(node))


def _aggregate(name: str, values: list[float]) -> float:
    strategy = TrackedStrategy(create_aggregation(name, sites=len(values)))
    arrays, _ = strategy.aggregate_train(1, [_reply(i, v, f"site-{i}") for i, v in enumerate(values)])
    assert arrays is not None
    return float(arrays["w"].numpy().mean())


def test_robust_rules_resist_one_outlier() -> None:
    values = [1.0, 1.1, 0.9, 1.05, 1000.0]
    assert _aggregate("fedavg", values) > 100
    for rule in ("median", "trimmed-mean", "krum"):
        assert _aggregate(rule, values) == pytest.approx(1.0, abs=0.2), rule


def test_lineage_is_recorded_and_failures_reported() -> None:
    reports = []
    strategy = TrackedStrategy(create_aggregation("fedavg", sites=2), on_round=reports.append)
    strategy.aggregate_train(1, [_reply(1, 1.0, "st-marys"), _failure(2)])
    assert strategy.sites["st-marys"].dp == {"epsilon": 1.25}
    assert strategy.sites["st-marys"].num_examples == 10
    assert reports[0].succeeded == ("st-marys",) and len(reports[0].failed) == 1


def test_a_round_where_every_site_failed_raises() -> None:
    strategy = TrackedStrategy(create_aggregation("fedavg", sites=2))
    with pytest.raises(TrainingError, match="aggregated nothing.*Flower error 0") as caught:
        strategy.aggregate_train(3, [_failure(1), _failure(2)])
    assert "label 7" not in str(caught.value)  # a reason that is no fedguard refusal may quote data: never shown


class _Enrolled:
    """Identities of a deployment: node 1 is st-marys, node 2 is kings."""

    names = {1: "st-marys", 2: "kings"}

    def verify(self, node_id: int, reported: str | None) -> str | None:
        return self.names.get(node_id) if reported == self.names.get(node_id) else None

    def enrolled(self, node_id: int) -> str | None:
        return self.names.get(node_id)


def test_failed_replies_are_reported_by_enrolled_name_with_the_sites_reason() -> None:
    from federation.protocol import SiteRefusal

    reports = []
    strategy = TrackedStrategy(create_aggregation("fedavg", sites=2), on_round=reports.append,
                               identities=_Enrolled())
    veto = SiteRefusal("budget-veto", "the site refused the round: its local privacy budget would be exceeded")
    strategy.aggregate_train(2, [_reply(1, 1.0, "st-marys"),
                                 Message(veto.to_error(6), reply_to=_request(2))])
    (report,) = reports
    assert report.succeeded == ("st-marys",)
    assert report.reasons == {"kings": veto.message}
    assert report.failed == (f"kings: {veto.message}",)


def test_unknown_rule() -> None:
    with pytest.raises(ConfigurationError, match="fedavg, median, trimmed-mean, krum"):
        create_aggregation("mean-of-means", sites=3)


def test_a_registered_rule_is_created_by_name() -> None:
    from flwr.serverapp.strategy import FedAvg

    from coordinator.strategies import aggregation

    aggregation.register_aggregation("fedavg-copy", FedAvg)
    try:
        rule = create_aggregation("fedavg-copy", sites=3)
        assert isinstance(rule, FedAvg) and rule.min_train_nodes == 3
        with pytest.raises(ConfigurationError, match="already registered"):
            aggregation.register_aggregation("fedavg", FedAvg)
    finally:
        aggregation.AGGREGATIONS.pop("fedavg-copy", None)
