"""The guarded predict path of ``fedguard serve`` against a bare FastAPI endpoint serving the same model.

Usage: ``python benchmarks/serving.py [--repeats 5] [--seconds 3] [--rate 1000] [--no-record]``.

Both servers are separate uvicorn processes with one worker on loopback:

- **guarded**: ``fedguard serve`` itself (signature verified at start; API-key
  authentication against the SQLite registry, per-key quotas, schema and range
  validation, rollout router and error-rate cut-out, drift monitor and
  extraction guard over the model's signed reference statistics, label-only
  output, Prometheus metrics, access log, body limit), with quotas set high
  enough never to refuse and the extraction guard's rate threshold raised so
  that it observes every request without throttling the one benchmark key;
- **bare**: a FastAPI app with one ``POST /predict`` route that parses the same
  ``{"instances": [[...]]}`` body with pydantic, runs the same torch module
  loaded from the same artifact, and returns the labels;
- **floor**: a bare ASGI callable under the same uvicorn that reads the body
  and returns a constant answer of the same shape: no framework, no model. Its
  latency at the fixed rate is what this machine and load generator give any
  Python server, the floor under the p99 goal (on a 2-vCPU virtual machine,
  bursts in which every process stops for 10-40 ms set it).

The load comes from another process (an asyncio client over raw keep-alive
sockets, one request in flight per connection) in two phases per server and
repeat, interleaved (the order rotates every repeat):

1. **max throughput**: ``--connections`` closed-loop connections for
   ``--seconds``; requests answered per second;
2. **fixed rate**: ``--rate`` requests per second offered open-loop for
   ``--seconds``; p50 and p99 latency from the moment each request is written
   until its whole response is read, and how many requests the generator
   itself wrote more than 2 ms after they were due (``late``: when that is
   high, the machine stalled the generator too).

Around each load run the server's own CPU time (``/proc/<pid>/stat``) is read,
giving **CPU per request**: with other jobs sharing the cores, wall-clock rates
swing several-fold between runs, while CPU per request barely moves, and its
ratio (bare ÷ guarded) is the throughput ratio the two would reach on a
dedicated core.

Prints the medians over ``--repeats`` and the ratios, and appends one row to
``benchmarks/RESULTS.md``. Goals (issue 5, point 11): throughput ratio ≥ 0.9,
guarded p99 ≤ 5 ms at 1k requests/s. Every process runs torch with one thread.
``--code DIR`` serves the guarded side from another checkout, for before/after
comparisons of the serving code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named like the ``serving`` package it measures: run as a script, its own folder comes
# first on sys.path and would shadow the package, so put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))
FEATURES = 30
INSTANCE = [round(0.1 * (i % 7) - 0.3, 2) for i in range(FEATURES)]
BODY = json.dumps({"instances": [INSTANCE]}).encode()


# ---------------------------------------------------------------- setup (this process)


def publish(home: Path) -> tuple[Path, str]:
    """Publish a signed 30-feature MLP named ``bench`` into ``home``; return its model dir and a predict key."""
    os.environ["FEDGUARD_HOME"] = str(home)
    import torch

    from lifecycle.architecture import DataSchema, ModelSpec, build_model, set_standardization
    from lifecycle.packaging import Publication, publish_model
    from lifecycle.registry import Registry, SiteRecord
    from lifecycle.settings import Settings
    from serving.guards.keys import create_key

    torch.manual_seed(0)
    spec = ModelSpec(in_features=FEATURES, num_classes=2, hidden=(32,))
    model = build_model(spec)
    set_standardization(model, torch.zeros(FEATURES), torch.ones(FEATURES))
    schema = DataSchema(features=tuple(f"f{i}" for i in range(FEATURES)), labels=("benign", "malignant"))
    sites = [SiteRecord("site-0", 100, "0" * 64, 3.0, 1e-5, 1)]
    registry = Registry.open(Settings(home=home))
    record = publish_model(registry, Publication(
        name="bench", model=model, spec=spec, schema=schema, run_id=uuid.uuid4().hex, run_config={}, rounds=1,
        sites=sites, training={"rounds": 1}, watermark={"scheme": "none"}, metrics={},
        reference=reference(model, schema)))
    key = create_key(registry, "predict", "benchmark").key
    registry.engine.dispose()
    return record.artifact.model_dir, key


def reference(model: Any, schema: Any) -> dict[str, Any]:
    """Reference statistics as ``fedguard simulate`` signs them, so drift and the extraction grid run."""
    import numpy as np
    import torch

    from federation.reference import reference_edges
    from lifecycle.bom.reference import ReferenceStats, histogram

    held = np.random.default_rng(0).normal(0.0, 0.3, size=(500, FEATURES))
    edges = reference_edges(held)
    with torch.no_grad():
        predicted = model(torch.from_numpy(held).float()).argmax(1).numpy()
    stats = ReferenceStats(schema.features, edges, histogram(held, edges), schema.labels,
                           tuple(int(c) for c in np.bincount(predicted, minlength=2)), ("site-0",))
    return stats.to_dict()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(
        FEDGUARD_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        FEDGUARD_SERVE_QUOTA_RATE="1000000", FEDGUARD_SERVE_QUOTA_BURST="1000000",
        FEDGUARD_SERVE_QUOTA_DAILY_BUDGET="1000000000",
        # One client at thousands of requests per second is what the extraction guard's rate signal
        # exists to catch: raise that threshold so the guard keeps observing every request (cells,
        # margins, window) without throttling the benchmark's key into 429s.
        FEDGUARD_SERVE_EXTRACTION_MAX_RATE="1000000000",
    )
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    """Run a server process until its /healthz answers; yield its pid; stop it afterwards."""
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180  # `fedguard serve` imports every CLI: slow on loaded cores
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server {argv[:3]} did not start; see {log}:\n{log.read_text()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                        if sock.recv(64).startswith(b"HTTP/1.1 200"):
                            break
                except OSError:
                    time.sleep(0.1)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def load(port: int, pid: int, path: str, key: str | None, args: argparse.Namespace) -> dict[str, float]:
    """Run the load generator in its own process against one server; return its JSON result.

    Adds ``cpu_us``: the server's CPU time per request answered over the whole
    run, which other jobs on the machine disturb far less than wall-clock rates.
    """
    argv = [sys.executable, str(Path(__file__).resolve()), "load", "--port", str(port), "--path", path,
            "--seconds", str(args.seconds), "--rate", str(args.rate), "--connections", str(args.connections)]
    if key:
        argv += ["--key", key]
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    used = cpu_seconds(pid) - before
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_us"] = 1e6 * used / result["requests"]
    return result


# ---------------------------------------------------------------- the bare baseline (its own process)


class Body(BaseModel):
    """The bare endpoint's body: the same shape as the guarded one, without strictness or limits."""

    instances: list[list[float]]


def bare_main(model_dir: Path, port: int) -> None:
    """A bare FastAPI endpoint: pydantic body, the same torch forward, labels out. No guard at all."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from lifecycle.artifacts import load_model
    from lifecycle.bom import bom_schema

    torch.set_num_threads(1)
    module, bom = load_model(model_dir)
    labels = bom_schema(bom).labels

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        with torch.no_grad():
            classes = module(torch.tensor(body.instances, dtype=torch.float32)).argmax(dim=1).tolist()
        return {"predictions": [labels[c] for c in classes]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, server_header=False)


FLOOR_ANSWER = json.dumps({"predictions": ["benign"], "model": "bench", "version": 1}).encode()


def floor_main(port: int) -> None:
    """The floor: uvicorn with an ASGI callable that reads the body and sends a constant answer."""
    import uvicorn

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(FLOOR_ANSWER)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": FLOOR_ANSWER})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, server_header=False)


# ---------------------------------------------------------------- the load generator (its own process)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def _closed_loop(port: int, request: bytes, seconds: float, connections: int) -> tuple[int, int]:
    deadline = time.perf_counter() + seconds
    done, failed = 0, 0

    async def worker() -> None:
        nonlocal done, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            status = await _exchange(reader, writer, request)
            done += 1
            failed += status != 200
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done, failed


async def _open_loop(
    port: int, request: bytes, seconds: float, rate: float, pool: int
) -> tuple[list[float], int, int]:
    total = int(seconds * rate)
    latencies: list[float] = []
    failed = late = 0
    counter = iter(range(total))
    start = time.perf_counter() + 0.05

    async def worker() -> None:
        nonlocal failed, late
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for k in counter:
            due = start + k / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            sent = time.perf_counter()
            late += sent - due > 0.002
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - sent)
            failed += status != 200
        writer.close()

    await asyncio.gather(*(worker() for _ in range(pool)))
    return latencies, failed, late


def load_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        pass
    auth = f"Authorization: Bearer {args.key}\r\n" if args.key else ""
    request = (f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    warm, _ = asyncio.run(_closed_loop(args.port, request, 0.5, args.connections))
    done, failed_max = asyncio.run(_closed_loop(args.port, request, args.seconds, args.connections))
    latencies, failed_rate, late = asyncio.run(_open_loop(args.port, request, args.seconds, args.rate, 32))
    latencies.sort()
    print(json.dumps({
        "rps": done / args.seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "failed": failed_max + failed_rate,
        "late": late,
        "requests": warm + done + len(latencies),
    }))


# ---------------------------------------------------------------- the benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("bare")
    bare.add_argument("--model-dir", type=Path, required=True)
    bare.add_argument("--port", type=int, required=True)
    floor = sub.add_parser("floor")
    floor.add_argument("--port", type=int, required=True)
    loader = sub.add_parser("load")
    loader.add_argument("--port", type=int, required=True)
    loader.add_argument("--path", required=True)
    loader.add_argument("--key")
    for target in (parser, loader):
        target.add_argument("--seconds", type=float, default=3.0)
        target.add_argument("--rate", type=float, default=1000.0)
        target.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true", help="Print only; do not append to RESULTS.md.")
    parser.add_argument("--note", default="", help="Appended to the row's notes (e.g. shared cores).")
    parser.add_argument("--code", type=Path, default=None,
                        help="Serve the guarded app from another checkout (e.g. `git archive <commit>` unpacked), "
                             "for before/after comparisons; the bare baseline always runs from this one.")
    args = parser.parse_args()
    if args.command == "bare":
        bare_main(args.model_dir, args.port)
        return
    if args.command == "floor":
        floor_main(args.port)
        return
    if args.command == "load":
        load_main(args)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        model_dir, key = publish(home)
        env = _env(home)
        ports = {name: free_port() for name in ("guarded", "bare", "floor")}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        here = str(Path(__file__).resolve())
        argv = {
            "guarded": [FEDGUARD, "serve", "--port", str(ports["guarded"])],
            "bare": [sys.executable, here, "bare", "--model-dir", str(model_dir), "--port", str(ports["bare"])],
            "floor": [sys.executable, here, "floor", "--port", str(ports["floor"])],
        }
        paths = {"guarded": ("/v1/models/bench/predict", key), "bare": ("/predict", None), "floor": ("/predict", None)}
        guarded_env = {**env, "PYTHONPATH": str(args.code.resolve())} if args.code else env
        with server(argv["guarded"], guarded_env, ports["guarded"], Path(tmp) / "guarded.log") as guarded_pid, \
                server(argv["bare"], env, ports["bare"], Path(tmp) / "bare.log") as bare_pid, \
                server(argv["floor"], env, ports["floor"], Path(tmp) / "floor.log") as floor_pid:
            pids = {"guarded": guarded_pid, "bare": bare_pid, "floor": floor_pid}
            names = list(ports)
            for i in range(args.repeats):
                for name in names[i % 3:] + names[: i % 3]:
                    path, bearer = paths[name]
                    result = load(ports[name], pids[name], path, bearer, args)
                    results[name].append(result)
                    print(f"run {i + 1} {name:8s} {result['rps']:7.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
                          f"p99 {result['p99_ms']:.2f} ms  server CPU {result['cpu_us']:.0f} µs/request  "
                          f"late sends {result['late']:.0f}  failed {result['failed']:.0f}", flush=True)
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    metrics = ("rps", "p50_ms", "p99_ms", "failed", "cpu_us")
    med = {name: {m: statistics.median(r[m] for r in runs) for m in metrics} for name, runs in results.items()}
    g, b, f = med["guarded"], med["bare"], med["floor"]
    p99s = {name: ", ".join(f"{r['p99_ms']:.1f}" for r in runs) for name, runs in results.items()}
    ratio = g["rps"] / b["rps"]
    cpu_ratio = b["cpu_us"] / g["cpu_us"]
    print(f"max throughput: guarded {g['rps']:.0f} req/s, bare {b['rps']:.0f} req/s, ratio {ratio:.2f} (goal >= 0.9)")
    print(f"server CPU per request: guarded {g['cpu_us']:.0f} µs, bare {b['cpu_us']:.0f} µs: throughput ratio on a "
          f"dedicated core {cpu_ratio:.2f}")
    print(f"at {args.rate:.0f} req/s: guarded p50 {g['p50_ms']:.2f} ms p99 {g['p99_ms']:.2f} ms (goal p99 <= 5 ms); "
          f"bare p50 {b['p50_ms']:.2f} ms p99 {b['p99_ms']:.2f} ms")
    print(f"floor (constant answer, no framework): p50 {f['p50_ms']:.2f} ms p99 {f['p99_ms']:.2f} ms")
    print(f"p99 per run (ms): guarded {p99s['guarded']}; floor {p99s['floor']}")
    if args.no_record:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_results", HERE / "results.py")
    assert spec is not None and spec.loader is not None
    results_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_module)
    append_row, machine = results_module.append_row, results_module.machine

    notes = (f"server CPU per request {g['cpu_us']:.0f} µs vs {b['cpu_us']:.0f} µs (ratio {cpu_ratio:.2f}); "
             f"at {args.rate:.0f} req/s offered: guarded p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms; bare p50 "
             f"{b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms; {args.connections} connections, 1 instance of "
             f"{FEATURES} features per request; failed {g['failed'] + b['failed']:.0f}; p99 per run: guarded "
             f"{p99s['guarded']} ms, floor (uvicorn with a constant ASGI answer) {p99s['floor']} ms"
             + (f"; {args.note}" if args.note else ""))
    append_row(
        f"| {time.strftime('%Y-%m-%d')} | serving | guarded predict (fedguard serve) vs bare FastAPI endpoint, "
        f"max throughput, 1 uvicorn worker each, loopback, median of {args.repeats}×{args.seconds:g} s | "
        f"{g['rps']:.0f} req/s | {b['rps']:.0f} req/s | {ratio:.2f}x | {notes} | {machine()} |"
    )


if __name__ == "__main__":
    main()
