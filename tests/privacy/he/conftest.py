"""Shared fixtures: one federation key per test module, and an in-process federation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from privacy.he import ckks_mod, create_federation_keys

TrainFn = Callable[[Message, Context], Message]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a Flower runtime need the process's task identity (Flower sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture(scope="module")
def federation_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(secret_context_path, public_context_path)`` in separate site and coordinator dirs."""
    root = tmp_path_factory.mktemp("he-keys")
    return create_federation_keys(root / "site", root / "coordinator")


def global_arrays(seed: int = 0, sizes: tuple[int, ...] = (6, 3)) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({f"layer{i}": Array(rng.normal(size=(n,)).astype(np.float32)) for i, n in enumerate(sizes)})


def site_delta(node_id: int, server_round: int, layout: ArrayRecord) -> dict[str, np.ndarray]:
    """A deterministic per-site, per-round update (norm well under the clip bound)."""
    rng = np.random.default_rng(1000 * node_id + server_round)
    return {k: (0.1 * rng.normal(size=layout[k].shape)).astype(np.float32) for k in layout.keys()}


def examples_of(node_id: int) -> int:
    return 10 + 7 * node_id


def fake_train(msg: Message, context: Context) -> Message:
    """A ClientApp train handler: new weights = global + site_delta, plus the usual records."""
    arrays = msg.content.array_records["arrays"]
    server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
    delta = site_delta(context.node_id, server_round, arrays)
    local = ArrayRecord({k: Array(arrays[k].numpy() + delta[k]) for k in arrays.keys()})
    return Message(RecordDict({
        "arrays": local,
        "metrics": MetricRecord({"num-examples": examples_of(context.node_id), "train-loss": 0.5}),
        "site": ConfigRecord({"name": f"site-{context.node_id}", "manifest": "m"}),
    }), reply_to=msg)


def node_context(node_id: int, secret: Path | None, **node_config: object) -> Context:
    config = dict(node_config)
    if secret is not None:
        config["he-secret-context"] = str(secret)
    return Context(run_id=1, node_id=node_id, node_config=config,  # type: ignore[arg-type]
                   state=RecordDict(), run_config={})


class InProcessGrid:
    """A Grid stand-in that delivers each message to ``ckks_mod`` around ``train`` in-process.

    ``received`` keeps every reply the coordinator got, to check none holds a clear update.
    """

    def __init__(self, contexts: dict[int, Context], train: TrainFn = fake_train,
                 mod: Callable[[Message, Context, TrainFn], Message] = ckks_mod) -> None:
        self.contexts, self.train, self.mod = contexts, train, mod
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            try:
                reply = self.mod(message, self.contexts[node], self.train)
            except Exception as exc:  # noqa: BLE001 - what Flower does with any ClientApp exception: an error reply
                from flwr.app import Error
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            self.received.append(reply)
            replies.append(reply)
        return replies
