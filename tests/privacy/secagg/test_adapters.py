"""The Flower adapters in-process (no Ray): the client mod and the SecAggPlusStrategy wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from lifecycle.errors import TrainingError
from privacy.secagg import SecAggAbortedError, SecAggConfig, SecAggConfigError, SecAggRequiredError
from privacy.secagg.messages import MASKED_INPUT, RECORD_KEY, SETUP, UNMASK, header_of
from privacy.secagg.mod import secaggplus_mod
from privacy.secagg.strategy import SecAggPlusStrategy
from tests.privacy.secagg.apps import SHAPES, initial_arrays, make_client_app
from tests.privacy.secagg.harness import LocalGrid

CONFIG = SecAggConfig(num_sites=8, threshold=4, num_neighbours=6, clip_norm=10.0, max_weight=40.0)


def _stage(message: Message) -> str | None:
    record = message.content.config_records.get(RECORD_KEY)
    return header_of(record).stage if record is not None else None


def _clear(clear: Path, round_: int = 1) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(clear.glob(f"*-{round_}.json"))]


def _expected(records: list[dict[str, Any]], uniform: bool = False) -> np.ndarray:
    start = np.concatenate([initial_arrays()[k].numpy().ravel() for k in SHAPES]).astype(np.float64)
    weights = np.array([1.0 if uniform else r["examples"] for r in records])
    deltas = [np.concatenate([np.ravel(r["update"][k]) for k in SHAPES]) for r in records]
    return start + sum(w * d for w, d in zip(weights, deltas, strict=True)) / weights.sum()


def _vector(arrays: Any) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in SHAPES]).astype(np.float64)


class SpyFedAvg(FedAvg):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fraction_evaluate=0.0, **kwargs)
        self.aggregated: list[list[Message]] = []

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self.aggregated.append(replies)
        return super().aggregate_train(server_round, replies)


def _run(tmp_path: Path, n: int = 8, config: SecAggConfig = CONFIG, silence: Any = None, rounds: int = 1) -> Any:
    grid = LocalGrid(make_client_app(str(tmp_path)), n)
    if silence is not None:
        grid.silence = silence
    inner = SpyFedAvg()
    seen: list[tuple[int, int]] = []
    strategy = SecAggPlusStrategy(inner, config, on_replies=lambda r, ms: seen.append((r, len(ms))))
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds)
    return grid, inner, seen, result


def test_round_equals_plaintext_fedavg_and_coordinator_sees_only_masked_vectors(tmp_path: Path) -> None:
    grid, inner, seen, result = _run(tmp_path)
    records = _clear(tmp_path)
    assert len(records) == 8 and seen == [(1, 8)]
    assert np.max(np.abs(_vector(result.arrays) - _expected(records))) < 1e-5
    (synthetic,) = inner.aggregated[0]
    assert synthetic.content["metrics"]["num-examples"] == pytest.approx(sum(r["examples"] for r in records), abs=1e-3)
    assert synthetic.content["metrics"]["train-loss"] == pytest.approx(1.0)
    # (d) instrumented: every array the coordinator received is a uint32 masked vector unlike any clear update
    clear_vectors = [np.concatenate([np.ravel(r["update"][k]) for k in SHAPES]) for r in records]
    arrays = [a.numpy() for m in grid.received for rec in m.content.array_records.values() for a in rec.values()]
    assert len(arrays) == 8
    for array in arrays:
        assert array.dtype == np.uint32
        decoded = array.view(np.int32)[:-1] / CONFIG.effective_scale
        assert all(abs(np.corrcoef(decoded, u)[0, 1]) < 0.4 for u in clear_vectors)
    # each masked reply carried only public metadata beside the vector
    masked = [m for m in grid.received if _stage(m) == MASKED_INPUT]
    assert all(set(m.content.keys()) == {"arrays", "metrics", "site", RECORD_KEY} for m in masked)


def test_uniform_weighting(tmp_path: Path) -> None:
    config = SecAggConfig(num_sites=6, threshold=3, num_neighbours=4, clip_norm=10.0, max_weight=1.0,
                          weighting="uniform")
    _, _, _, result = _run(tmp_path, n=6, config=config)
    assert np.max(np.abs(_vector(result.arrays) - _expected(_clear(tmp_path), uniform=True))) < 1e-5


@pytest.mark.parametrize("stage", [SETUP, MASKED_INPUT, UNMASK])
def test_dropouts_up_to_tolerance_through_the_grid(tmp_path: Path, stage: str) -> None:
    victims: set[int] = set()

    def silence(message: Message) -> bool:
        if not victims:
            victims.update(sorted(grid_nodes)[: CONFIG.dropout_tolerance])
        return message.metadata.dst_node_id in victims and _stage(message) == stage

    grid_nodes = LocalGrid(make_client_app(None), 8).get_node_ids()
    _, _, seen, result = _run(tmp_path, silence=silence)
    records = _clear(tmp_path)
    if stage == MASKED_INPUT:  # the silent sites never trained
        assert len(records) == 8 - CONFIG.dropout_tolerance
    contributing = records if stage != SETUP else [r for r in records if r["node"] not in victims]
    assert np.max(np.abs(_vector(result.arrays) - _expected(contributing))) < 1e-5
    assert seen[0][1] == (8 if stage == UNMASK else 8 - CONFIG.dropout_tolerance)


def test_too_many_dropouts_fail_the_round_and_nothing_is_aggregated(tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(str(tmp_path)), 8)
    gone = set(grid.get_node_ids()[:5])
    grid.silence = lambda m: m.metadata.dst_node_id in gone and _stage(m) == UNMASK
    inner = SpyFedAvg()
    strategy = SecAggPlusStrategy(inner, CONFIG)
    with pytest.raises(TrainingError) as raised:
        strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1)
    assert isinstance(raised.value, SecAggAbortedError) and "t=4" in str(raised.value)
    assert inner.aggregated == []


def test_misconfiguration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecAggConfigError, match="need more than num_neighbours=6"):
        _run(tmp_path, n=6)
    with pytest.raises(SecAggConfigError, match="could overflow"):
        SecAggPlusStrategy(FedAvg(), SecAggConfig(8, 4, 6, 1.0, 1000.0, scale=2.0**30))


def test_mod_refuses_a_train_message_without_secagg(tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(str(tmp_path)), 4)
    node = grid.get_node_ids()[0]
    plain = Message(RecordDict({"arrays": initial_arrays(), "config": ConfigRecord({"server-round": 1})}),
                    dst_node_id=node, message_type=MessageType.TRAIN)
    with pytest.raises(SecAggRequiredError, match="never sends an unmasked update"):
        grid.app(plain, grid.contexts[node])
    assert not list(tmp_path.glob("*.json"))  # the app never trained


def test_mod_passes_other_message_types_through(tmp_path: Path) -> None:
    calls: list[str] = []

    def app(message: Message, context: Any) -> Message:
        calls.append(message.metadata.message_type)
        return Message(RecordDict({"metrics": MetricRecord({"eval-loss": 0.1})}), reply_to=message)

    grid = LocalGrid(make_client_app(None), 4)
    node = grid.get_node_ids()[0]
    message = Message(RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE)
    reply = secaggplus_mod(message, grid.contexts[node], app)
    assert calls == ["evaluate"] and reply.content["metrics"]["eval-loss"] == pytest.approx(0.1)


def test_mod_refuses_a_weight_above_max_weight(tmp_path: Path) -> None:
    config = SecAggConfig(num_sites=6, threshold=3, num_neighbours=4, clip_norm=10.0, max_weight=5.0)
    grid = LocalGrid(make_client_app(None), 6)
    strategy = SecAggPlusStrategy(FedAvg(fraction_evaluate=0.0), config)
    with pytest.raises(SecAggAbortedError):
        strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1)
    errors = [m.error.reason for m in grid.received if m.has_error()]
    assert errors and all("outside (0, max_weight=5]" in e for e in errors)


def test_replayed_masked_input_request_does_not_retrain(tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(str(tmp_path)), 8)
    sent: list[Message] = []
    original = grid.send_and_receive

    def record(messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent.extend(messages)
        return original(messages, timeout=timeout)

    grid.send_and_receive = record  # type: ignore[method-assign]
    SecAggPlusStrategy(SpyFedAvg(), CONFIG).start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1)
    masked = next(m for m in sent if _stage(m) == MASKED_INPUT)
    before = len(list(tmp_path.glob("*.json")))
    with pytest.raises(Exception, match="out of order.*replayed"):
        grid.app(masked, grid.contexts[masked.metadata.dst_node_id])
    assert len(list(tmp_path.glob("*.json"))) == before


def test_reply_without_protocol_record_is_rejected_with_reason(tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(str(tmp_path)), 8)
    original = grid.send_and_receive
    liar = grid.get_node_ids()[0]

    def strip(messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = original(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == liar and RECORD_KEY in reply.content and "arrays" in reply.content:
                del reply.content[RECORD_KEY]
        return replies

    grid.send_and_receive = strip  # type: ignore[method-assign]
    strategy = SecAggPlusStrategy(SpyFedAvg(), CONFIG)
    captured: dict[str, Any] = {}
    inner_parse = strategy._parse

    def parse(server: Any, stage: str, replies: Any) -> Any:
        captured["server"] = server
        return inner_parse(server, stage, replies)

    strategy._parse = parse  # type: ignore[method-assign]
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1)
    assert "no 'secagg' record" in captured["server"].rejections[liar]
    honest = [r for r in _clear(tmp_path) if r["node"] != liar]
    assert np.max(np.abs(_vector(result.arrays) - _expected(honest))) < 1e-5
