"""Secure-aggregation round time ÷ plaintext round time, fedguard's SecAgg+ and Flower's legacy SecAgg+.

Usage: ``python benchmarks/secagg.py [--sites 20] [--params 100000] [--repeats 3] [--train-steps 5]``.
Prints every median and ratio, the mask-generation speed, and appends rows to ``benchmarks/RESULTS.md``.

What is measured (one process, no Ray, no network; the same for all four variants):

* every site is a real Flower ``ClientApp`` called in-process by a minimal ``Grid`` (one ``Context``
  per node); every message and reply is serialized to Flower's protobuf wire format and back, as a
  SuperLink round trip would, but there is no network, no SuperLink and no Ray;
* a round is one full training round driven by the real coordinator code: for fedguard,
  ``SecAggPlusStrategy(FedAvg).start(num_rounds=1)`` (setup, share-keys, masked-input, unmask stages)
  against plain Message-API ``FedAvg.start(num_rounds=1)``; for Flower, the legacy
  ``SecAggPlusWorkflow(num_shares=5, reconstruction_threshold=3)`` fit round (``secaggplus_mod`` on a
  ``NumPyClient``) against the legacy ``default_fit_workflow`` (plain FedAvg) on the same grid;
* local training is identical everywhere: ``--train-steps`` full-batch gradient steps of logistic
  regression with ``--params`` weights on 16 local examples (data generated once per site, outside the
  timing) (0 = no training: protocol cost only,
  and the round is then dominated by the protocol; both workloads are reported);
* fedguard is run twice: like-for-like with Flower (k = 4 neighbours, t = 3: each secret split into
  4 shares, Flower's ``num_shares=5`` counts the site itself) and with the recommended
  ``SecAggConfig.recommended(n)`` (k = 10, t = 6 at n = 20);
* mask generation: AES-256-CTR keystream written and added into a uint32 accumulator
  (``privacy.secagg.prg.throughput``), in GB of mask per second on one core: median and best of 5
  (interleaved with ChaCha20's);
* the five variants are measured in turn within each repeat (medians per variant), so load
  from other jobs on shared cores falls on all of them alike; wall-clock and process-CPU-time
  ratios are both reported (CPU time moves much less when other jobs share the cores);
* local training runs on **one BLAS thread for every variant** (``OPENBLAS_NUM_THREADS``,
  ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` default to 1 before numpy is imported; set them to
  override): a second BLAS thread stalls whenever other jobs hold the cores, which made the
  plaintext round swing 0.3–6.2 s and the with-training ratios meaningless;
* ChaCha20 is measured beside AES-256-CTR as a mask PRG (same buffer and add), for reference.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy is imported
    os.environ.setdefault(_threads, "1")

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results import append_row, machine  # noqa: E402  # benchmarks/results.py (scripts run from benchmarks/)

from privacy.secagg import SecAggConfig  # noqa: E402
from privacy.secagg.mod import secaggplus_mod  # noqa: E402
from privacy.secagg.prg import throughput  # noqa: E402
from privacy.secagg.strategy import SecAggPlusStrategy  # noqa: E402

EXAMPLES = 16
_DATA: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


class InProcessGrid(Grid):
    """Delivers each message to a ClientApp in this process (one Context per node)."""

    def __init__(self, app: ClientApp, n: int) -> None:
        from flwr.supercore.run import Run

        self.app = app
        rng = np.random.default_rng(0)
        ids = [int(x) for x in rng.integers(1, 2**63 - 1, size=n, dtype=np.int64)]
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": i}, state=RecordDict(),
                                       run_config={}) for i, node in enumerate(ids)}
        self._run = Run.create_empty(run_id=1)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message = _wire(message)
            try:
                reply = self.app(message, self.contexts[message.metadata.dst_node_id])
            except Exception as error:  # noqa: BLE001 (an app failure becomes an error reply)
                reply = Message(Error(code=0, reason=str(error)), reply_to=message)
            replies.append(_wire(reply))
        return replies


def _wire(message: Message) -> Message:
    """Serialize to Flower's protobuf wire format and back, as a SuperLink round trip would."""
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    return message_from_proto(ProtoMessage.FromString(message_to_proto(message).SerializeToString()))


def local_training(weights: np.ndarray, seed: int, steps: int) -> np.ndarray:
    """``steps`` full-batch gradient steps of logistic regression on this site's examples."""
    rng = np.random.default_rng(seed)
    w = weights.astype(np.float32).ravel().copy()
    if steps == 0:
        return (w + rng.normal(scale=1e-3, size=w.size).astype(np.float32)).reshape(weights.shape)
    if (seed, w.size) not in _DATA:  # the site's data is loaded once, not per round
        _DATA[(seed, w.size)] = (rng.normal(size=(EXAMPLES, w.size)).astype(np.float32) / np.sqrt(w.size),
                                 (rng.random(EXAMPLES) < 0.5).astype(np.float32))
    x, y = _DATA[(seed, w.size)]
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        w -= 0.5 * (x.T @ (p - y)) / EXAMPLES
    return w.reshape(weights.shape)


def message_api_app(steps: int, protected: bool) -> ClientApp:
    app = ClientApp(mods=[secaggplus_mod] if protected else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        new = {k: local_training(a.numpy(), int(context.node_config["partition-id"]), steps) for k, a in arrays.items()}
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": EXAMPLES, "train-loss": 0.0}),
            "site": ConfigRecord({"name": str(context.node_config["partition-id"])}),
        }), reply_to=msg)

    return app


def run_message_api(n: int, d: int, steps: int, config: SecAggConfig | None) -> tuple[float, float]:
    grid = InProcessGrid(message_api_app(steps, config is not None), n)
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    strategy = inner if config is None else SecAggPlusStrategy(inner, config)
    initial = ArrayRecord({"w": Array(np.zeros(d, np.float32))})
    started, cpu = time.perf_counter(), time.process_time()
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    return time.perf_counter() - started, time.process_time() - cpu


def run_flower_legacy(n: int, d: int, steps: int, secure: bool) -> tuple[float, float]:
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod as flower_secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.compat.app_utils import start_update_client_manager_thread
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
    from flwr.server.workflow.default_workflows import default_fit_workflow, default_init_params_workflow

    class Site(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return [local_training(p, self.partition, steps) for p in parameters], EXAMPLES, {}

    app = ClientApp(client_fn=lambda context: Site(int(context.node_config["partition-id"])).to_client(),
                    mods=[flower_secaggplus_mod] if secure else [])
    grid = InProcessGrid(app, n)
    strategy = LegacyFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                            initial_parameters=ndarrays_to_parameters([np.zeros(d, np.float32)]))
    context = LegacyContext(context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    thread, stop, done = start_update_client_manager_thread(grid, context.client_manager)
    done.wait()
    default_init_params_workflow(grid, context)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: 1, Key.START_TIME: time.time()})
    fit: Callable[[Any, Any], None] = (
        SecAggPlusWorkflow(num_shares=5, reconstruction_threshold=3) if secure else default_fit_workflow
    )
    started, cpu = time.perf_counter(), time.process_time()
    fit(grid, context)
    elapsed = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    return elapsed


def chacha20_throughput(length: int = 1 << 20, repeats: int = 50) -> float:
    """Like ``prg.throughput`` with ChaCha20 (256-bit key, zero nonce) instead of AES-256-CTR, in GB/s."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    zeros, buffer = bytes(4 * length), bytearray(4 * length)
    view, accumulator = np.frombuffer(buffer, dtype=np.uint32), np.zeros(length, dtype=np.uint32)
    started = time.perf_counter()
    for i in range(repeats):
        Cipher(algorithms.ChaCha20(bytes([i % 256]) * 32, bytes(16)), None).encryptor().update_into(zeros, buffer)
        np.add(accumulator, view, out=accumulator)
    return 4 * length * repeats / (time.perf_counter() - started) / 1e9


def interleaved_medians(
    repeats: int, measures: dict[str, Callable[[], tuple[float, float]]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and process-CPU time of each variant, measured in turn within every repeat.

    Interleaving keeps a burst of load from other jobs on the shared cores from landing on one
    variant only (each variant is warmed up once first: imports, first allocations). The CPU
    time (``time.process_time``: this process, all its threads) is reported beside the wall
    time because it moves much less when other jobs share the cores.
    """
    for measure in measures.values():
        measure()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            times[name].append(measure())
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    n, d = args.sites, args.params
    like_flower = SecAggConfig(num_sites=n, threshold=3, num_neighbours=4, clip_norm=1.0, max_weight=EXAMPLES)
    recommended = SecAggConfig.recommended(n, clip_norm=1.0, max_weight=EXAMPLES)
    # Interleaved, 5 each: the median, and the best (the least disturbed by other jobs on the cores).
    speeds: dict[str, list[float]] = {"aes": [], "chacha": [], "aes-d": []}
    for _ in range(5):
        speeds["aes"].append(throughput(1 << 20, 50))
        speeds["chacha"].append(chacha20_throughput(1 << 20, 50))
        speeds["aes-d"].append(throughput(d + 1, 200))  # this benchmark's vector size
    gbps, gbps_chacha, gbps_small = (statistics.median(speeds[k]) for k in ("aes", "chacha", "aes-d"))
    best, best_chacha = max(speeds["aes"]), max(speeds["chacha"])
    load = os.getloadavg()[0]
    rows = []
    for steps in sorted({args.train_steps, 0}, reverse=True):
        label = f"{steps} local steps" if steps else "no local training"
        medians, cpu = interleaved_medians(args.repeats, {
            "plain": functools.partial(run_message_api, n, d, steps, None),
            "ours4": functools.partial(run_message_api, n, d, steps, like_flower),
            "ours": functools.partial(run_message_api, n, d, steps, recommended),
            "legacy_plain": functools.partial(run_flower_legacy, n, d, steps, False),
            "legacy": functools.partial(run_flower_legacy, n, d, steps, True),
        })
        plain, ours4, ours = medians["plain"], medians["ours4"], medians["ours"]
        legacy_plain, legacy = medians["legacy_plain"], medians["legacy"]
        print(f"[{label}] n={n} sites, d={d} parameters, medians of {args.repeats}")
        print(f"  plaintext FedAvg (Message API)              {plain * 1e3:8.1f} ms")
        print(f"  fedguard SecAgg+ k=4 t=3 (like Flower's)    {ours4 * 1e3:8.1f} ms   ratio {ours4 / plain:.2f}x")
        print(f"  fedguard SecAgg+ k={recommended.num_neighbours} t={recommended.threshold} (recommended)   "
              f"{ours * 1e3:8.1f} ms   ratio {ours / plain:.2f}x")
        print(f"  plaintext FedAvg (Flower legacy workflow)   {legacy_plain * 1e3:8.1f} ms")
        print(f"  Flower legacy SecAgg+ num_shares=5 t=3      {legacy * 1e3:8.1f} ms   "
              f"ratio {legacy / legacy_plain:.2f}x")
        cpu_ratios = (f"CPU-time ratios {cpu['ours4'] / cpu['plain']:.2f}x (k=4,t=3), "
                      f"{cpu['ours'] / cpu['plain']:.2f}x "
                      f"(k={recommended.num_neighbours},t={recommended.threshold}), Flower "
                      f"{cpu['legacy'] / cpu['legacy_plain']:.2f}x (plain {cpu['plain'] * 1e3:.0f} ms CPU)")
        print(f"  {cpu_ratios}")
        rows.append((label, plain, ours4, ours, legacy_plain, legacy, cpu_ratios))
    print(f"mask generation (AES-256-CTR, one core): {gbps:.2f} GB/s median, {best:.2f} best (goal ≥ 4); "
          f"{gbps_small:.2f} GB/s at {d + 1} words; ChaCha20: {gbps_chacha:.2f} median, {best_chacha:.2f} best")
    cores = os.cpu_count() or 1
    shared = (f"; load average {load:.1f} on {cores} cores at the start: other jobs shared the cores"
              if load > cores / 2 else "")
    if args.no_results:
        return
    for label, plain, ours4, ours, legacy_plain, legacy, cpu_ratios in rows:
        append_row(
                f"| {time.strftime('%Y-%m-%d')} | secagg | SecAgg+ round ÷ plaintext round, in-process grid "
                f"({n} sites, {d} params, {label}, {args.repeats} runs) | {ours4 / plain:.2f}x (k=4,t=3); "
                f"{ours / plain:.2f}x (k={recommended.num_neighbours},t={recommended.threshold}) "
                f"| Flower legacy SecAgg+ {legacy / legacy_plain:.2f}x | {ours4 / plain:.2f}x vs "
                f"{legacy / legacy_plain:.2f}x | plain {plain * 1e3:.0f} ms, "
                f"ours {ours4 * 1e3:.0f}/{ours * 1e3:.0f} ms, "
                f"Flower {legacy_plain * 1e3:.0f}→{legacy * 1e3:.0f} ms (wall medians); "
                f"masks {gbps:.1f} GB/s median, {best:.1f} best (ChaCha20 {gbps_chacha:.1f}, {best_chacha:.1f}); "
                f"local training on {os.environ['OPENBLAS_NUM_THREADS']} BLAS thread(s) in every variant; "
                f"{cpu_ratios}{shared} "
                f"| {machine()} |"
        )


if __name__ == "__main__":
    main()
