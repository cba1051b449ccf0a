"""Seconds per round over the real deployment runtime: fedguard's runtime options vs Flower's defaults.

A SuperLink (TLS, throwaway CA) and 3 SuperNodes on loopback, the default
job (breast-cancer MLP, DP-SGD ε=3, SecAgg+, 2 local epochs) for ``--rounds``
rounds submitted with ``fedguard run launch``; a round's time is the gap
between consecutive ``round`` events of the run's progress log (round 1 from
the ``identified`` event). "ours" runs the sites through ``client.runtime``
(warm forking executor, 0.1 s idle poll) and the ServerApp with a 50 ms grid
poll; the baseline runs ``flower-supernode`` as shipped (a process per
message, 3 s idle poll, 1 s task poll) and the grid's 3 s poll. Both in the
same invocation, interleaved; medians over all rounds of all repeats.
``python benchmarks/deployment.py [--rounds 3] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from results import append_row, machine  # noqa: E402  # benchmarks/results.py

from coordinator.runs.launch import events  # noqa: E402
from federation.runtime_options import TRACE_ENV  # noqa: E402
from lifecycle.home import Home  # noqa: E402
from tests.integration.deployment import Federation, prepare_sites  # noqa: E402

SITES = 3


def one_run(root: Path, rounds: int, fast: bool) -> tuple[list[float], float]:
    """Per-round seconds and the whole run's seconds (submission to publication)."""
    data = prepare_sites(root, SITES)
    fed = Federation(root / ("fast" if fast else "plain"), SITES, fast=fast)
    try:
        fed.start_superlink()
        for i in range(SITES):
            fed.start_supernode(i, data / f"site-{i}.csv", f"site-{i}")
        job = root / "job.toml"
        job.write_text(f'num-server-rounds = {rounds}\nnum-sites = {SITES}\ndata-dir = "{data}"\n'
                       f'watermark = "none"\nmodel-name = "bench"\n')
        started = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "fedguard.cli", "run", "launch", str(job), "--superlink", fed.address,
             "--root-certificates", str(fed.tls.ca), "--no-follow", "--json"],
            env=fed.client_env(), capture_output=True, text=True, timeout=300, check=True)
        run_id = json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]
        marks: list[float] = []
        for event in events(Home(fed.home), run_id, timeout=1200):
            if event["event"] == "failed":
                raise RuntimeError(f"{event}\n{fed.logs()}")
            if event["event"] == "stage" and event.get("stage") == "identified" or event["event"] == "round":
                marks.append(float(event["time"]))
            if event["event"] == "done":
                return [b - a for a, b in itertools.pairwise(marks)], float(event["time"]) - started
        raise RuntimeError(f"run did not finish\n{fed.logs()}")
    finally:
        fed.stop()


STAGES = (
    ("grid", "push→pushed", "ServerApp pushes one exchange's messages to the SuperLink"),
    ("supernode", "_pull_and_store_message", "SuperNode pulls a message and its objects from the SuperLink"),
    ("executor", "fork→forked", "executor forks the warm ClientApp child"),
    ("clientapp", "pull_task_input", "child pulls the message and its objects from its SuperNode"),
    ("clientapp", "install_from_fab", "child unpacks the run's FAB"),
    ("clientapp", "load_client_app", "child loads the (preloaded) ClientApp"),
    ("clientapp", "handler", "ClientApp handler (training, SecAgg+ stage)"),
    ("clientapp", "push_message", "child pushes its reply to its SuperNode"),
    ("supernode", "_push_messages", "SuperNode waits for the reply and pushes it to the SuperLink"),
    ("grid", "push→last reply", "one exchange, as the ServerApp sees it"),
)


def stage_table(trace: Path) -> list[tuple[str, float, float, int]]:
    """(stage, median s, max s, count) per :data:`STAGES` from one ``FEDGUARD_RUNTIME_TRACE`` file.

    The run's first exchange (the sites' identification query, once per run)
    is left out, so the figures are those of the training rounds.
    """
    events = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines() if line.strip()]
    events.sort(key=lambda e: e["t"])
    trained = [e for e in events if e["component"] == "grid" and e["stage"] == "push" and e.get("kind") == "train"]
    start = trained[0]["t"] if trained else 0.0
    events = [e for e in events if e.get("start", e["t"]) >= start - 0.5]
    samples: dict[str, list[float]] = {}
    push: dict[str, Any] = {}
    forks: list[float] = []
    for e in events:
        key = e["component"], e["stage"]
        if "seconds" in e:
            samples.setdefault(e["stage"], []).append(float(e["seconds"]))
        elif key == ("grid", "push"):
            push = e if e.get("n") else {}
        elif key == ("grid", "pushed") and push:
            samples.setdefault("push→pushed", []).append(e["t"] - push["t"])
        elif key == ("grid", "replies") and push and e.get("left") == 0:
            samples.setdefault("push→last reply", []).append(e["t"] - push["t"])
        elif key == ("executor", "fork"):
            forks.append(e["t"])
        elif key == ("clientapp", "forked") and forks:
            samples.setdefault("fork→forked", []).append(e["t"] - forks.pop(0))
    return [(f"{stage} ({why})", statistics.median(v), max(v), len(v))
            for _, stage, why in STAGES if (v := samples.get(stage))]


def rpc_table(trace: Path) -> list[tuple[str, str, int, float, float, float]]:
    """(component, method, count, median s, max s, total s) of every traced Flower request, busiest first."""
    samples: dict[tuple[str, str], list[float]] = {}
    for line in trace.read_text(encoding="utf-8").splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("stage") == "rpc":
            samples.setdefault((event["component"], event["method"]), []).append(float(event["seconds"]))
    rows = [(c, m, len(v), statistics.median(v), max(v), sum(v)) for (c, m), v in samples.items()]
    return sorted(rows, key=lambda row: -row[5])


def _exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so ``one_run``'s ``finally`` stops the SuperLink and the sites."""
    sys.exit(128 + signum)


def main() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--only", choices=("ours", "defaults"), help="run one configuration (implies --no-record)")
    parser.add_argument("--report", type=Path, help="print the stage table of a trace file and exit")
    parser.add_argument("--trace", type=Path, help=f"write per-stage timestamps ({TRACE_ENV}) to DIR/<config>.jsonl")
    args = parser.parse_args()
    if args.report is not None:
        for stage, median, worst, count in stage_table(args.report):
            print(f"| {stage} | {median:.2f} | {worst:.2f} | {count} |")
        print("\n| process | request | count | median s | max s | total s |\n|---|---|---|---|---|---|")
        for component, method, count, median, worst, total in rpc_table(args.report):
            print(f"| {component} | {method} | {count} | {median:.3f} | {worst:.3f} | {total:.1f} |")
        return
    configs = {"ours": (True,), "defaults": (False,), None: (True, False)}[args.only]
    load_before = os.getloadavg()[0]
    rounds: dict[bool, list[float]] = {True: [], False: []}
    totals: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for fast in configs if repeat % 2 == 0 else configs[::-1]:
            if args.trace is not None:
                args.trace.mkdir(parents=True, exist_ok=True)
                os.environ[TRACE_ENV] = str((args.trace / f"{'ours' if fast else 'defaults'}.jsonl").resolve())
            root = Path(tempfile.mkdtemp(prefix="fedguard-bench-"))
            try:
                per_round, total = one_run(root, args.rounds, fast)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            rounds[fast] += per_round
            totals[fast].append(total)
            print(f"{'ours' if fast else 'flower defaults'}: rounds {[f'{r:.1f}' for r in per_round]} s, "
                  f"run {total:.1f} s", flush=True)
    if args.only:
        print(f"seconds per round (median): {args.only} {statistics.median(rounds[args.only == 'ours']):.2f} s")
        return
    ours, base = statistics.median(rounds[True]), statistics.median(rounds[False])
    print(f"seconds per round (median): ours {ours:.2f} s, Flower defaults {base:.2f} s, {base / ours:.1f}x faster")
    if not args.no_record:
        append_row(
            f"| {dt.date.today()} | deployment | seconds per round, {SITES} SuperNodes + SuperLink on loopback, TLS, "
            f"default job (DP ε=3, SecAgg+), {args.rounds} rounds × {args.repeats} | {ours:.2f} s | {base:.2f} s | "
            f"{ours / base:.2f}x | whole run (submit→publish, no watermark): {statistics.median(totals[True]):.1f} s "
            f"vs {statistics.median(totals[False]):.1f} s; measured while other jobs shared the 2 cores (1-min load "
            f"average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end) | {machine()} |"
        )


if __name__ == "__main__":
    main()
