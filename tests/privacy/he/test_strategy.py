"""CKKSStrategy around FedAvg on an in-process federation: exact FedAvg, no clear update, loud failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp.strategy import FedAvg

from lifecycle.errors import TrainingError
from privacy.he import CKKSStrategy, HEAggregationError, HEKeyError, ckks_mod
from privacy.updates import flatten

from .conftest import InProcessGrid, examples_of, fake_train, global_arrays, node_context, site_delta


def plain_fedavg(arrays: ArrayRecord, nodes: list[int], server_round: int) -> np.ndarray:
    vector, _ = flatten(arrays)
    deltas = [np.concatenate([d.ravel() for d in site_delta(n, server_round, arrays).values()]) for n in nodes]
    weights = np.array([examples_of(n) for n in nodes], dtype=np.float64)
    return vector + np.sum([w * d for w, d in zip(weights, deltas, strict=True)], axis=0) / weights.sum()


def make(public: Path, nodes: int = 4, **kwargs: object) -> CKKSStrategy:
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
    return CKKSStrategy(inner, public, min_sites=kwargs.pop("min_sites", 3), clip_norm=10.0,  # type: ignore[arg-type]
                        max_weight=1000.0, **kwargs)  # type: ignore[arg-type]


def run_round(strategy: CKKSStrategy, grid: InProcessGrid, arrays: ArrayRecord, server_round: int = 1):  # type: ignore[no-untyped-def]
    messages = strategy.configure_train(server_round, arrays, ConfigRecord({}), grid)  # type: ignore[arg-type]
    return strategy.aggregate_train(server_round, grid.send_and_receive(messages))


@pytest.mark.parametrize("decryptors", [1, 2])
def test_two_rounds_equal_plaintext_fedavg(federation_keys: tuple[Path, Path], decryptors: int) -> None:
    secret, public = federation_keys
    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)})
    seen: list[tuple[int, int]] = []
    strategy = make(public, decryptors=decryptors, on_replies=lambda r, replies: seen.append((r, len(replies))))
    arrays = global_arrays()
    for server_round in (1, 2):
        expected = plain_fedavg(arrays, [1, 2, 3, 4], server_round)
        arrays, metrics = run_round(strategy, grid, arrays, server_round)
        assert np.allclose(flatten(arrays)[0], expected, rtol=1e-6, atol=1e-6)
        assert metrics["train-loss"] == pytest.approx(0.5)
    assert seen == [(1, 4), (2, 4)]
    assert all("arrays" not in m.content.array_records for m in grid.received)
    decrypts = [m for m in grid.received if "sum" in m.content.array_records]
    assert len(decrypts) == 2 * decryptors


def test_a_failed_site_is_left_out_and_too_few_raise(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys

    def flaky(msg: Message, context: Context) -> Message:
        if context.node_id in (3, 4):
            raise RuntimeError("disk full")
        return fake_train(msg, context)

    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)}, train=flaky)
    arrays = global_arrays()
    new, _ = run_round(make(public, min_sites=2), grid, arrays)
    assert np.allclose(flatten(new)[0], plain_fedavg(arrays, [1, 2], 1), rtol=1e-6, atol=1e-6)
    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)}, train=flaky)
    with pytest.raises(HEAggregationError, match="fewer than the 3 required") as caught:
        run_round(make(public, min_sites=3), grid, arrays)
    assert isinstance(caught.value, TrainingError)


def test_a_clear_update_is_discarded(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys

    def leaky_mod(msg, context, call_next):  # type: ignore[no-untyped-def]
        reply = ckks_mod(msg, context, call_next)
        if context.node_id == 1 and "ciphertext" in reply.content:
            reply.content["arrays"] = ArrayRecord({"x": Array(np.zeros(1))})
        return reply

    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)}, mod=leaky_mod)
    arrays = global_arrays()
    new, _ = run_round(make(public), grid, arrays)
    assert np.allclose(flatten(new)[0], plain_fedavg(arrays, [2, 3, 4], 1), rtol=1e-6, atol=1e-6)


def test_disagreeing_decryptors_abort_the_round(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys

    def lying_mod(msg, context, call_next):  # type: ignore[no-untyped-def]
        reply = ckks_mod(msg, context, call_next)
        if "sum" in reply.content.array_records and context.node_id == 2:
            payload = reply.content.array_records["sum"]["payload"].numpy() * 2
            reply.content["sum"] = ArrayRecord({"payload": Array(payload)})
        return reply

    grid = InProcessGrid({n: node_context(n, secret) for n in range(1, 5)}, mod=lying_mod)
    with pytest.raises(HEAggregationError, match="different aggregates"):
        run_round(make(public, decryptors=2), grid, global_arrays())


def test_no_willing_decryptor_aborts_the_round(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys
    contexts = {n: node_context(n, secret, **{"he-min-sites": 10}) for n in range(1, 5)}
    with pytest.raises(HEAggregationError, match="decryptor"):
        run_round(make(public), InProcessGrid(contexts), global_arrays())


def test_strategy_refuses_the_secret_context(federation_keys: tuple[Path, Path]) -> None:
    with pytest.raises(HEKeyError, match="secret key"):
        make(federation_keys[0])
