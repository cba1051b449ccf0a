"""Baseline for benchmarks/simulation.py: plain Flower FedAvg, nothing else.

Same MLP, same input scaling, same site files and held-out set, same rounds
and local epochs as ``fedguard simulate`` — but no DP, no watermark, no
signing, no registry. Run as ``python benchmarks/plain_flower.py DATA_DIR ROUNDS SITES``.
"""

# ruff: noqa: E402  (STARTED is stamped before the imports)
from __future__ import annotations

import time

STARTED = time.monotonic()  # before the imports: benchmarks/simulation.py reports them apart

import json
import logging
import os
import sys
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federation.tabular import load_csv, load_schema
from lifecycle.architecture import ModelSpec, build_model, set_standardization

DATA = Path(sys.argv[1])
ROUNDS, SITES = int(sys.argv[2]), int(sys.argv[3])
SCHEMA = load_schema(DATA / "schema.json")
SPEC = ModelSpec(len(SCHEMA.features), len(SCHEMA.labels), (32,))
LOCAL_EPOCHS, BATCH, LR = 2, 32, 0.1


def _load(name: str):  # type: ignore[no-untyped-def]
    return load_csv(DATA / name, list(SCHEMA.features), SCHEMA.target, len(SCHEMA.labels))


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    data = _load(f"site-{int(context.node_config['partition-id'])}.csv")
    model = build_model(SPEC)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    loader = DataLoader(TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels)),
                        batch_size=BATCH, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for _ in range(LOCAL_EPOCHS):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": data.num_examples})})
    return Message(content=content, reply_to=msg)


server = ServerApp()
RESULT: dict[str, float] = {}
EVALUATED: list[float] = []  # time.monotonic() of each central evaluation: round 0 (before any training), 1, …


@server.main()
def main(grid: Grid, context: Context) -> None:
    test = _load("test.csv")
    torch.manual_seed(42)
    model = build_model(SPEC)
    feats = torch.from_numpy(test.features)
    set_standardization(model, feats.mean(0), feats.std(0))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            acc = float((model(feats).argmax(1) == torch.from_numpy(test.labels)).float().mean())
        RESULT["accuracy"] = acc
        EVALUATED.append(time.monotonic())
        return MetricRecord({"accuracy": acc})

    FedAvg(fraction_evaluate=0.0, min_train_nodes=SITES, min_available_nodes=SITES).start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=ROUNDS,
        train_config=ConfigRecord(), evaluate_fn=evaluate,
    )


if __name__ == "__main__":
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    started = time.monotonic()
    run_simulation(server_app=server, client_app=client, num_supernodes=SITES,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(os.cpu_count() or 1, 2 * SITES),
                                                 "include_dashboard": False, "logging_level": logging.ERROR}})
    print(json.dumps({"accuracy": RESULT.get("accuracy"), "seconds": time.monotonic() - started,
                      "started": STARTED, "engine": started, "evaluated": EVALUATED, "finished": time.monotonic()}))
