"""Test-only Flower apps: a tiny ClientApp behind the SecAgg+ mod that also writes its clear update
to a directory (so a test can compare), and a ServerApp whose grid records every reply it receives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from privacy.secagg import SecAggConfig
from privacy.secagg.mod import secaggplus_mod
from privacy.secagg.strategy import SecAggPlusStrategy

SHAPES = {"w": (20, 12), "b": (12,)}


def initial_arrays() -> ArrayRecord:
    rng = np.random.default_rng(42)
    return ArrayRecord({k: Array(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()})


def make_client_app(clear_dir: str | None = None, *, step: float = 0.05) -> ClientApp:
    """Each site moves the weights by a site-specific random step; its clear update goes to ``clear_dir``."""
    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        round_ = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        seed = int(context.node_id % 2**32) + 7919 * round_
        rng = np.random.default_rng(seed)
        new = {k: (a.numpy() + rng.normal(scale=step, size=a.numpy().shape)).astype(np.float32)
               for k, a in arrays.items()}
        examples = 10 + seed % 23
        if clear_dir is not None:
            record = {"node": context.node_id, "round": round_, "examples": examples,
                      "update": {k: (new[k] - arrays[k].numpy()).tolist() for k in new}}
            Path(clear_dir, f"{context.node_id}-{round_}.json").write_text(json.dumps(record))
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0 / round_}),
            "site": ConfigRecord({"name": f"site-{context.node_id % 1000}"}),
        })
        return Message(content=content, reply_to=msg)

    return app


class RecordingGrid:
    """Wraps the ServerApp's grid and keeps every message the coordinator receives."""

    def __init__(self, grid: Grid, received: list[Message]) -> None:
        self._grid, self.received = grid, received

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def make_server_app(config: SecAggConfig, num_rounds: int, outcome: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        received: list[Message] = []
        sites: list[tuple[int, list[str]]] = []
        strategy = SecAggPlusStrategy(
            FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=config.num_sites,
                   min_available_nodes=config.num_sites),
            config, on_replies=lambda r, ms: sites.append((r, [str(m.content["site"]["name"]) for m in ms])),
            timeout=120.0,
        )
        Grid.register(RecordingGrid)
        result = strategy.start(grid=RecordingGrid(grid, received), initial_arrays=initial_arrays(),
                                num_rounds=num_rounds, timeout=120.0)
        outcome.update(result=result, received=received, sites=sites)

    return app
