"""Malformed updates (issue 4, 5d): rejected with an audited reason, the round aggregates the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from sqlmodel import select

from coordinator.strategies.aggregation import create_aggregation
from coordinator.strategies.tracked import RoundReport, TrackedStrategy
from coordinator.strategies.validation import (
    UPDATE_REJECTED,
    Rejection,
    UpdateValidationStrategy,
    UpdateValidator,
    audit_rejections,
)
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from privacy.he.instruction import CIPHERTEXT_RECORD, HE_RECORD
from privacy.secagg.messages import RECORD_KEY
from privacy.secagg.strategy import SecAggPlusStrategy
from tests.privacy.secagg.apps import initial_arrays
from tests.privacy.secagg.apps import make_client_app as secagg_client_app
from tests.privacy.secagg.harness import LocalGrid
from tests.privacy.secagg.test_adapters import CONFIG, SpyFedAvg, _clear, _expected, _vector

GLOBAL = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def _reply(request: Message, values: dict[str, np.ndarray], name: str, weight: float = 10) -> Message:
    content = RecordDict({"arrays": _arrays(values), "metrics": MetricRecord({"num-examples": weight}),
                          "site": ConfigRecord({"name": name, "manifest": "ab" * 32})})
    return Message(content, reply_to=request)


def _good(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


BAD: dict[str, tuple[Callable[[], dict[str, np.ndarray]], float, str]] = {
    "nan": (lambda: {**_good(0.1), "b": np.array([np.nan, 0.1], dtype=np.float32)}, 10, "NaN or infinite"),
    "inf": (lambda: {**_good(0.1), "w": np.full((3, 2), np.inf, dtype=np.float32)}, 10, "NaN or infinite"),
    "shape": (lambda: {**_good(0.1), "w": np.zeros((2, 3), dtype=np.float32)}, 10, "float32[2, 3]"),
    "dtype": (lambda: {**_good(0.1), "b": np.zeros(2, dtype=np.float64)}, 10, "float64[2]"),
    "names": (lambda: {"w": np.zeros((3, 2), dtype=np.float32)}, 10, "global model's names"),
    "norm": (lambda: _good(2.0), 10, "above the clipping bound 1"),
    "weight": (lambda: _good(0.1), 1e9, "outside (0, max-weight=1000]"),
}


@pytest.fixture
def grid() -> LocalGrid:
    return LocalGrid(secagg_client_app(None), 4)  # only its node ids are used: replies are crafted here


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_malformed_clear_update_is_rejected_audited_and_the_round_continues(
    registry: Registry, grid: LocalGrid, kind: str
) -> None:
    reports: list[RoundReport] = []
    tracked = TrackedStrategy(create_aggregation("fedavg", sites=4), on_round=reports.append)
    strategy = UpdateValidationStrategy(tracked, UpdateValidator("none", clip_norm=1.0, max_weight=1000),
                                        on_reject=audit_rejections(registry, "run-1"))
    requests = list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord({}), grid))
    assert len(requests) == 4 and requests[0].content["config"]["clip-norm"] == 1.0  # sites clip to what is checked
    values, weight, reason = BAD[kind]
    replies = [_reply(r, _good(0.1 * (i + 1)), f"site-{i}") for i, r in enumerate(requests[:3])]
    replies.append(_reply(requests[3], values(), "mallory", weight))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert np.allclose(arrays["w"].numpy(), 0.2) and np.allclose(arrays["b"].numpy(), 0.2)  # mean of the others
    (rejection,) = strategy.rejections
    assert (rejection.site, rejection.server_round) == ("mallory", 1) and reason in rejection.reason
    assert set(tracked.sites) == {"site-0", "site-1", "site-2"}  # the rejected site is not credited
    assert reports[0].succeeded == ("site-0", "site-1", "site-2") and len(reports[0].rejected) == 1
    assert "update rejected by the coordinator" in reports[0].failed[0]
    with registry.transaction() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "update.rejected")).all()
    (event,) = events
    details = json.loads(event.details_json)
    assert event.subject == "mallory" and details["round"] == 1 and details["run"] == "run-1"
    assert reason in details["reason"] and "nan" not in event.details_json.replace("NaN", "")
    assert registry.verify_audit_chain() >= 1


def test_a_round_of_only_malformed_updates_fails_loudly(grid: LocalGrid) -> None:
    strategy = UpdateValidationStrategy(TrackedStrategy(create_aggregation("fedavg", sites=4)),
                                        UpdateValidator("none", clip_norm=1.0, max_weight=1000))
    requests = list(strategy.configure_train(2, _arrays(GLOBAL), ConfigRecord({}), grid))
    with pytest.raises(Exception, match="aggregated nothing.*update rejected by the coordinator"):
        strategy.aggregate_train(2, [_reply(r, BAD["nan"][0](), f"s{i}") for i, r in enumerate(requests)])


def _tamper_masked(grid: LocalGrid, victim: int, mutate: Callable[[np.ndarray], np.ndarray]) -> None:
    original = grid.send_and_receive

    def send(messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = original(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == victim and "arrays" in reply.content and RECORD_KEY in reply.content:
                masked = reply.content["arrays"]["masked"].numpy()
                reply.content["arrays"] = ArrayRecord({"masked": Array(np.ascontiguousarray(mutate(masked)))})
        return replies

    grid.send_and_receive = send  # type: ignore[method-assign]


@pytest.mark.parametrize("mutate", [lambda m: m[:-1], lambda m: m.astype(np.int64)], ids=["shape", "dtype"])
def test_secagg_payload_of_the_wrong_shape_or_dtype_is_rejected_and_masks_still_cancel(
    tmp_path: Path, mutate: Callable[[np.ndarray], np.ndarray]
) -> None:
    grid = LocalGrid(secagg_client_app(str(tmp_path)), 8)
    victim = grid.get_node_ids()[2]
    _tamper_masked(grid, victim, mutate)
    rejected: list[Rejection] = []
    strategy = UpdateValidationStrategy(SecAggPlusStrategy(SpyFedAvg(), CONFIG),
                                        UpdateValidator("secagg+", clip_norm=10.0, max_weight=40.0),
                                        on_reject=rejected.append)
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1)
    assert [r.node_id for r in rejected] == [victim] and "masked vector" in rejected[0].reason
    others = [r for r in _clear(tmp_path) if r["node"] != victim]
    assert len(others) == 7
    assert np.max(np.abs(_vector(result.arrays) - _expected(others))) < 1e-5  # the sum of the other seven


def _ckks_reply(request: Message, *, length: int, chunks: dict[str, np.ndarray], clear: bool = False) -> Message:
    content = RecordDict({HE_RECORD: ConfigRecord({"key-id": "k", "length": length, "backend": "ckks"}),
                          CIPHERTEXT_RECORD: _arrays(chunks), "metrics": MetricRecord({"num-examples": 3})})
    if clear:
        content["arrays"] = _arrays(GLOBAL)
    return Message(content, reply_to=request)


def test_ckks_payload_checks(grid: LocalGrid) -> None:
    validator = UpdateValidator("ckks", clip_norm=1.0, max_weight=10)
    request = Message(RecordDict(), dst_node_id=grid.get_node_ids()[0], message_type=MessageType.TRAIN)
    size = 3 * 2 + 2 + 2
    ok = {"chunk-00000": np.arange(16, dtype=np.uint8)}
    assert validator.check(_ckks_reply(request, length=size, chunks=ok), _arrays(GLOBAL)) is None
    cases = [
        (_ckks_reply(request, length=size + 1, chunks=ok), "another model size"),
        (_ckks_reply(request, length=size, chunks={"chunk-00000": np.zeros(4, dtype=np.float32)}),
         "not a non-empty uint8"),
        (_ckks_reply(request, length=size, chunks=ok, clear=True), "clear weights"),
    ]
    for reply, reason in cases:
        assert reason in (validator.check(reply, _arrays(GLOBAL)) or "")


def test_the_error_code_is_outside_flowers_range() -> None:
    from flwr.common.constant import ErrorCode

    codes = {v for k, v in vars(ErrorCode).items() if k.isupper()}
    assert UPDATE_REJECTED not in codes


def poison_site_zero(msg: Message, context: Any, call_next: Callable[[Message, Any], Message]) -> Message:
    """Test-only client mod: site 0 replaces its trained weights by NaN (everything else untouched)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and int(context.node_config["partition-id"]) == 0:
        arrays = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord({k: Array(np.full(arrays[k].shape, np.nan, dtype=arrays[k].numpy().dtype))
                                               for k in arrays.keys()})
    return reply


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.usefixtures("shared_ray")  # one Ray head per test process, not one per run
def test_a_simulated_site_sending_nan_is_rejected_and_the_run_completes(fedguard_home: Path, tmp_path: Path) -> None:
    from client.app import make_client_app
    from coordinator.app import make_server_app
    from lifecycle.home import Home, SiteHome
    from simulations.federation import SimulationConfig, _engine_environment, prepare_data
    from tests.ray_cluster import run_simulation_on_test_ray

    cfg = SimulationConfig(sites=3, rounds=2, watermark="none", secure_agg="none", dp_epsilon=0.0, local_epochs=1)
    prepared = prepare_data(cfg, tmp_path / "data")
    _engine_environment(Home(fedguard_home).ensure())
    outcome: dict[str, Any] = {}
    run_simulation_on_test_ray(
        fedguard_home,
        server_app=make_server_app(cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
                                   lambda event, payload: None, outcome),
        client_app=make_client_app(require_protection=False, mods=[poison_site_zero]),
        num_supernodes=cfg.sites,
    )
    assert "model" in outcome, "the run did not complete"
    assert [(h["sites"], h["failed"], h["rejected"]) for h in outcome["history"]] == [(2, 1, 1), (2, 1, 1)]
    assert [(r["site"], r["server_round"]) for r in outcome["rejected_updates"]] == [("site-0", 1), ("site-0", 2)]
    assert all("NaN or infinite" in r["reason"] for r in outcome["rejected_updates"])
    assert set(outcome["epsilon"]) == {"site-1", "site-2"}  # lineage credits only the sites aggregated
    registry = Registry.open()
    with registry.transaction() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "update.rejected")).all()
    assert [(e.subject, json.loads(e.details_json)["round"]) for e in events] == [("site-0", 1), ("site-0", 2)]
    registry.verify_audit_chain()
    site_log = SiteHome.under(fedguard_home, "site-0").audit_log
    poisoned = [json.loads(line) for line in site_log.read_text().splitlines()]
    assert [line["kind"] for line in poisoned].count("train") == 2  # the site's own log shows what it sent


def test_ckks_ciphertext_of_the_wrong_dtype_is_rejected_and_the_others_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from privacy.he import CKKSStrategy, create_federation_keys
    from privacy.updates import flatten
    from tests.privacy.he.conftest import InProcessGrid, global_arrays, node_context
    from tests.privacy.he.test_strategy import plain_fedavg

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    secret, public = create_federation_keys(tmp_path / "site", tmp_path / "coordinator")
    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)})
    original = grid.send_and_receive

    def tamper(messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = original(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == 2 and CIPHERTEXT_RECORD in reply.content:
                chunks = reply.content[CIPHERTEXT_RECORD]
                reply.content[CIPHERTEXT_RECORD] = _arrays({k: chunks[k].numpy().astype(np.float32)
                                                            for k in chunks.keys()})
        return replies

    grid.send_and_receive = tamper  # type: ignore[method-assign]
    rejected: list[Rejection] = []
    inner = CKKSStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4), public,
                         min_sites=3, clip_norm=10.0, max_weight=1000.0)
    strategy = UpdateValidationStrategy(inner, UpdateValidator("ckks", clip_norm=10.0, max_weight=1000.0),
                                        on_reject=rejected.append)
    arrays = global_arrays()
    messages = strategy.configure_train(1, arrays, ConfigRecord({}), grid)  # type: ignore[arg-type]
    new, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert [(r.node_id, r.site) for r in rejected] == [(2, "site-2")] and "uint8" in rejected[0].reason
    assert new is not None
    assert np.allclose(flatten(new)[0], plain_fedavg(arrays, [1, 3, 4], 1), rtol=1e-6, atol=1e-6)
