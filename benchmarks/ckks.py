"""Time one CKKS-aggregated round against one plaintext FedAvg round at 100k parameters, in one run.

Usage: ``python benchmarks/ckks.py [--params 100000] [--sites 5] [--repeats 5]``.
Both rounds run the same Flower Message-API code in-process (an in-memory grid
delivers each message to the site's handler; no Ray, no network), so the ratio
is the cost of the homomorphic path itself: sites clip, weight, encrypt and
serialize; the coordinator parses and adds ciphertexts; one site decrypts the
sum. The baseline is Flower's ``FedAvg`` receiving the sites' clear weights.
Prints both medians, their ratio and the ciphertext expansion, and appends a
row to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import logging  # noqa: E402

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from results import append_row, machine  # noqa: E402  # benchmarks/results.py (scripts run from benchmarks/)

from privacy.he import CKKSStrategy, ckks_mod, create_federation_keys  # noqa: E402
from privacy.he.keys import DEFAULT_PARAMETERS  # noqa: E402


class LocalGrid:
    """Delivers messages to in-process sites (optionally through ``ckks_mod``); counts reply bytes."""

    def __init__(self, sites: int, secret: str | None, params: int) -> None:
        config = {"he-secret-context": secret} if secret else {}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=dict(config), state=RecordDict(), run_config={})
                         for n in range(1, sites + 1)}
        self.use_mod = secret is not None
        self.params = params
        self.reply_bytes: list[int] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def train(self, msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        rng = np.random.default_rng(context.node_id)
        local = {k: Array(arrays[k].numpy() + rng.normal(0, 1e-3, arrays[k].shape).astype(np.float32))
                 for k in arrays.keys()}
        return Message(RecordDict({"arrays": ArrayRecord(local),
                                   "metrics": MetricRecord({"num-examples": 100 + context.node_id})}), reply_to=msg)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            context = self.contexts[msg.metadata.dst_node_id]
            reply = ckks_mod(msg, context, self.train) if self.use_mod else self.train(msg, context)
            for record in reply.content.array_records.values():
                self.reply_bytes.append(sum(record[k].numpy().nbytes for k in record.keys()))
            replies.append(reply)
        return replies


def one_round(strategy: Any, grid: LocalGrid, arrays: ArrayRecord) -> float:
    started = time.perf_counter()
    messages = strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    new, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert new is not None
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as Flower's runtime sets them
    arrays = ArrayRecord({"w": Array(np.random.default_rng(0).normal(size=args.params).astype(np.float32))})
    with tempfile.TemporaryDirectory() as tmp:
        secret, public = create_federation_keys(Path(tmp) / "site", Path(tmp) / "coordinator")
        ours, plain = [], []
        for _ in range(args.repeats):
            fedavg = FedAvg(fraction_evaluate=0.0, min_train_nodes=args.sites, min_available_nodes=args.sites)
            he_grid = LocalGrid(args.sites, str(secret), args.params)
            strategy = CKKSStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=args.sites,
                                           min_available_nodes=args.sites),
                                    public, min_sites=args.sites, clip_norm=10.0, max_weight=1000.0)
            ours.append(one_round(strategy, he_grid, arrays))
            plain_grid = LocalGrid(args.sites, None, args.params)
            plain.append(one_round(fedavg, plain_grid, arrays))
        public_size = public.stat().st_size
    cipher_bytes = he_grid.reply_bytes[0]  # one site's encrypted payload
    clear32 = plain_grid.reply_bytes[0]    # one site's clear float32 weights
    clear64 = 8 * (args.params + 2)        # the float64 payload [wΔ, w, 1] it encrypts
    t_ours, t_plain = statistics.median(ours), statistics.median(plain)
    ratio = t_ours / t_plain
    chunks = -(-(args.params + 2) // DEFAULT_PARAMETERS.slots)
    print(f"CKKS round ({args.sites} sites, {args.params} params): median {t_ours * 1e3:.1f} ms")
    print(f"plaintext FedAvg round (same sites, same code path): median {t_plain * 1e3:.1f} ms")
    print(f"ratio CKKS / plaintext: {ratio:.1f}x  ({args.repeats} runs each)")
    print(f"ciphertext per site: {cipher_bytes / 2**20:.2f} MiB in {chunks} ciphertexts; expansion "
          f"{cipher_bytes / clear32:.1f}x vs float32 weights, {cipher_bytes / clear64:.1f}x vs the float64 payload; "
          f"public context {public_size / 2**20:.2f} MiB")
    row = (f"| {time.strftime('%Y-%m-%d')} | ckks | CKKS-aggregated round vs plaintext FedAvg round, in-process "
           f"({args.sites} sites, {args.params} params, {args.repeats} runs) | {t_ours * 1e3:.0f} ms "
           f"| {t_plain * 1e3:.1f} ms | {ratio:.1f}x | ciphertext {cipher_bytes / 2**20:.2f} MiB/site = "
           f"{cipher_bytes / clear32:.1f}x float32 weights ({cipher_bytes / clear64:.1f}x float64 payload); "
           f"N=8192, q=60+60+60, scale 2^80 | {machine()} |")
    append_row(row)


if __name__ == "__main__":
    main()
