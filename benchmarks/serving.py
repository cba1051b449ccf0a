"""The guarded predict path of ``fedguard serve`` against a bare async FastAPI endpoint serving the same model.

Usage: ``python benchmarks/serving.py [--repeats 5] [--seconds 3] [--rate 1000] [--no-record]``.
Needs ``wrk`` on the PATH (Debian: ``apt-get install wrk``).

The three servers are separate processes, each one uvicorn worker on loopback
with the same uvicorn settings (uvloop and httptools as uvicorn picks them, no
``Server`` header, uvicorn's own access log off):

- **guarded**: ``fedguard serve`` itself (signature verified at start; API-key
  authentication against the SQLite registry, per-key quotas, schema and range
  validation, rollout router and error-rate cut-out, drift monitor and
  extraction guard over the model's signed reference statistics, label-only
  output, Prometheus metrics, access log, body limit), with quotas set high
  enough never to refuse and the extraction guard's rate threshold raised so
  that it observes every request without throttling the one benchmark key;
- **bare**: a FastAPI app with one ``async def`` ``POST /predict`` route (no
  thread-pool hop) that parses the same ``{"instances": [[...]]}`` body with
  pydantic, runs the same signed ``model.onnx`` in ONNX Runtime with the same
  session options (one intra-op thread), and returns the labels;
- **floor**: a bare ASGI callable under the same uvicorn that reads the body
  and returns a constant answer of the same shape: no framework, no model. Its
  latency at the fixed rate is what this machine and load generator give any
  Python server, the floor under the p99 goal.

Two load phases per server and repeat, interleaved (the order rotates every
repeat), each from another process:

1. **max throughput**: ``wrk -t1 -c8`` (8 keep-alive connections, one request
   in flight on each) for ``--seconds`` after a 1 s warm-up; requests answered
   per second;
2. **fixed rate**: ``--rate`` requests per second offered open-loop for
   ``--seconds`` by an asyncio client over raw keep-alive sockets (a pool of 32
   connections; ``wrk2`` is not packaged by Debian). Latency is measured from
   the moment each request was *due*, not from when it was written, so a
   request held back by a stalled server or generator counts its wait
   (coordinated omission, Tene); ``late`` counts the requests written more
   than 2 ms after they were due (when that is high, the machine stalled the
   generator too).

Around each load run the server's own CPU time (``/proc/<pid>/stat``) is read,
giving **CPU per request**: with other jobs sharing the cores, wall-clock rates
swing between runs, while CPU per request barely moves. After the runs each
server's resident set (``VmRSS``) and peak (``VmHWM``) are read.

Prints the medians over ``--repeats`` and the ratios, and appends one row to
``benchmarks/RESULTS.md``. Goals (issue 16, point 3): guarded ≥ 0.9× the bare
async endpoint's throughput, guarded p99 ≤ 2 ms at 1k requests/s.
``--code DIR`` adds a fourth server, ``before``: ``fedguard serve`` from another
checkout, in the same rotation, for before/after comparisons of the serving code.
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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named like the ``serving`` package it measures: run as a script, its own folder comes
# first on sys.path and would shadow the package, so put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
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
        # Run from the log's (temporary) folder: `python -m` puts the working directory first on sys.path,
        # where this checkout (or benchmarks/serving.py, shadowing the package) would beat PYTHONPATH.
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=log.parent)
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


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident set and its peak (``VmRSS``, ``VmHWM``) of process ``pid``, in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wrk_script(path: Path, key: str | None) -> Path:
    """A wrk Lua script that POSTs the benchmark body (with the bearer key, if any)."""
    lines = ['wrk.method = "POST"', f"wrk.body = '{BODY.decode()}'",
             'wrk.headers["Content-Type"] = "application/json"']
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(port: int, path: str, script: Path, seconds: float, connections: int) -> tuple[float, int, int]:
    """``wrk -t1 -cN``: (requests/s, requests, responses that were not 2xx/3xx)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    rps = requests = failed = 0.0
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(words[1])
        elif "requests in" in line:
            requests = int(words[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            failed = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            failed += sum(int(w.rstrip(",")) for w in words[3::2])
    return rps, int(requests), int(failed)


def load(port: int, pid: int, path: str, key: str | None, args: argparse.Namespace, script: Path) -> dict[str, float]:
    """Both load phases against one server; the server's CPU per request measured around each."""
    run_wrk(port, path, script, 1, args.connections)  # warm-up
    before = cpu_seconds(pid)
    rps, requests, failed_max = run_wrk(port, path, script, args.seconds, args.connections)
    cpu_max = cpu_seconds(pid) - before
    argv = [sys.executable, str(Path(__file__).resolve()), "load", "--port", str(port), "--path", path,
            "--seconds", str(args.seconds), "--rate", str(args.rate), "--connections", str(args.connections)]
    if key:
        argv += ["--key", key]
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cpu_rate = cpu_seconds(pid) - before
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(rps=rps, failed=result["failed"] + failed_max, cpu_us=1e6 * cpu_max / max(requests, 1),
                  cpu_rate_us=1e6 * cpu_rate / result["requests"])
    return result


# ---------------------------------------------------------------- the bare baseline (its own process)


class Body(BaseModel):
    """The bare endpoint's body: the same shape as the guarded one, without strictness or limits."""

    instances: list[list[float]]


def uvicorn_settings(port: int) -> dict[str, Any]:
    """What every server here runs under: ``fedguard serve``'s uvicorn options (serving.cli.uvicorn_options)."""
    return {"host": "127.0.0.1", "port": port, "server_header": False, "access_log": False, "log_level": "warning"}


def bare_main(model_dir: Path, port: int) -> None:
    """A bare async FastAPI endpoint: pydantic body, the same ONNX model, labels out. No guard at all."""
    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI

    from lifecycle.bom import bom_schema, read_bom

    labels = bom_schema(read_bom(model_dir)).labels
    options = ort.SessionOptions()  # as serving.runtime.OnnxModel builds it
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    input_name, outputs = session.get_inputs()[0].name, [session.get_outputs()[0].name]

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: Body) -> dict[str, Any]:
        batch = np.asarray(body.instances, dtype=np.float32)
        classes = session.run(outputs, {input_name: batch})[0].argmax(axis=1).tolist()
        return {"predictions": [labels[c] for c in classes], "model": "bench", "version": 1}

    uvicorn.run(app, **uvicorn_settings(port))


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

    uvicorn.run(app, **uvicorn_settings(port))


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


async def _open_loop(
    port: int, request: bytes, seconds: float, rate: float, pool: int
) -> tuple[list[float], list[float], int, int]:
    """Offer ``rate`` requests/s for ``seconds``, open loop, over ``pool`` keep-alive connections.

    Request ``k`` is due at ``start + k / rate`` whatever happened to the
    others; its latency runs from then to the end of its response (corrected
    for coordinated omission), its service time from when it was written.
    """
    total = int(seconds * rate)
    latencies: list[float] = []
    service: list[float] = []
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
            done = time.perf_counter()
            latencies.append(done - due)
            service.append(done - sent)
            failed += status != 200
        writer.close()

    await asyncio.gather(*(worker() for _ in range(pool)))
    return latencies, service, failed, late


def load_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        pass
    auth = f"Authorization: Bearer {args.key}\r\n" if args.key else ""
    request = (f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    latencies, service, failed, late = asyncio.run(_open_loop(args.port, request, args.seconds, args.rate, 32))
    latencies.sort()
    service.sort()
    print(json.dumps({
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "p99_service_ms": 1000 * service[int(len(service) * 0.99)],
        "failed": failed,
        "late": late,
        "requests": len(latencies),
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
                        help="Also serve the guarded app from another checkout (e.g. `git archive <commit>` unpacked) "
                             "as a fourth server, 'before', in the same rotation, for before/after comparisons.")
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
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on the PATH; install it (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        model_dir, key = publish(home)
        env = _env(home)
        names = ("guarded", "bare", "floor") + (("before",) if args.code else ())
        ports = {name: free_port() for name in names}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        here = str(Path(__file__).resolve())
        argv = {
            "guarded": [sys.executable, "-m", "fedguard.cli", "serve", "--port", str(ports["guarded"])],
            "bare": [sys.executable, here, "bare", "--model-dir", str(model_dir), "--port", str(ports["bare"])],
            "floor": [sys.executable, here, "floor", "--port", str(ports["floor"])],
        }
        paths = {"guarded": ("/v1/models/bench/predict", key), "bare": ("/predict", None), "floor": ("/predict", None)}
        if args.code:
            argv["before"] = [sys.executable, "-m", "fedguard.cli", "serve", "--port", str(ports["before"])]
            paths["before"] = paths["guarded"]
        scripts = {name: wrk_script(Path(tmp) / f"{name}.lua", bearer) for name, (_, bearer) in paths.items()}
        envs = {name: env for name in names}
        if args.code:
            envs["before"] = {**env, "PYTHONPATH": str(args.code.resolve())}
        memory: dict[str, tuple[float, float]] = {}
        with ExitStack() as stack:
            pids = {name: stack.enter_context(server(argv[name], envs[name], ports[name], Path(tmp) / f"{name}.log"))
                    for name in names}
            order = list(names)
            for i in range(args.repeats):
                for name in order[i % len(order):] + order[: i % len(order)]:
                    path, bearer = paths[name]
                    result = load(ports[name], pids[name], path, bearer, args, scripts[name])
                    results[name].append(result)
                    print(f"run {i + 1} {name:8s} {result['rps']:7.0f} req/s  CPU {result['cpu_us']:4.0f} µs/req  | "
                          f"at {args.rate:.0f}/s: p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms "
                          f"(service p99 {result['p99_service_ms']:.2f})  late sends {result['late']:.0f}  "
                          f"failed {result['failed']:.0f}", flush=True)
            memory = {name: rss_mib(pid) for name, pid in pids.items()}
    report(results, memory, args)


def report(results: dict[str, list[dict[str, float]]], memory: dict[str, tuple[float, float]],
           args: argparse.Namespace) -> None:
    metrics = ("rps", "p50_ms", "p99_ms", "failed", "cpu_us", "late")
    med = {name: {m: statistics.median(r[m] for r in runs) for m in metrics} for name, runs in results.items()}
    g, b, f = med["guarded"], med["bare"], med["floor"]
    p99s = {name: ", ".join(f"{r['p99_ms']:.1f}" for r in runs) for name, runs in results.items()}
    ratios = [gr["rps"] / br["rps"] for gr, br in zip(results["guarded"], results["bare"], strict=True)]
    ratio = g["rps"] / b["rps"]
    cpu_ratio = b["cpu_us"] / g["cpu_us"]
    rss = {name: f"{now:.0f} MiB (peak {peak:.0f})" for name, (now, peak) in memory.items()}
    load = os.getloadavg()
    print(f"max throughput (wrk -t1 -c{args.connections}): guarded {g['rps']:.0f} req/s, bare async {b['rps']:.0f} "
          f"req/s, ratio {ratio:.2f} (per repeat {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.9); "
          f"floor {f['rps']:.0f} req/s")
    print(f"server CPU per request: guarded {g['cpu_us']:.0f} µs, bare {b['cpu_us']:.0f} µs, floor {f['cpu_us']:.0f} "
          f"µs: throughput ratio on a dedicated core {cpu_ratio:.2f}")
    print(f"at {args.rate:.0f} req/s (from the due time): guarded p50 {g['p50_ms']:.2f} ms p99 {g['p99_ms']:.2f} ms "
          f"(goal p99 <= 2 ms); bare p50 {b['p50_ms']:.2f} ms p99 {b['p99_ms']:.2f} ms; "
          f"floor p50 {f['p50_ms']:.2f} ms p99 {f['p99_ms']:.2f} ms")
    print(f"p99 per run (ms): guarded {p99s['guarded']}; bare {p99s['bare']}; floor {p99s['floor']}")
    print(f"RSS after the runs: guarded {rss['guarded']}, bare {rss['bare']}, floor {rss['floor']}")
    if "before" in med:
        o = med["before"]
        print(f"before (--code {args.code}): {o['rps']:.0f} req/s (ratio to bare {o['rps'] / b['rps']:.2f}), CPU "
              f"{o['cpu_us']:.0f} µs/request, p50 {o['p50_ms']:.2f} ms p99 {o['p99_ms']:.2f} ms at {args.rate:.0f} "
              f"req/s, RSS {rss['before']}; p99 per run {p99s['before']}")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.no_record:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_results", HERE / "results.py")
    assert spec is not None and spec.loader is not None
    results_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_module)
    append_row, machine = results_module.append_row, results_module.machine

    notes = (f"wrk -t1 -c{args.connections}; per-repeat ratios {', '.join(f'{r:.2f}' for r in ratios)}; server CPU "
             f"per request {g['cpu_us']:.0f} µs vs {b['cpu_us']:.0f} µs (ratio {cpu_ratio:.2f}); at {args.rate:.0f} "
             f"req/s offered open-loop, latency from the due time: guarded p50 {g['p50_ms']:.2f} ms, p99 "
             f"{g['p99_ms']:.2f} ms; bare p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms; floor p99 "
             f"{f['p99_ms']:.2f} ms; p99 per run: guarded {p99s['guarded']} ms, bare {p99s['bare']} ms; RSS guarded "
             f"{rss['guarded']}, bare {rss['bare']}; 1 instance of {FEATURES} features per request; failed "
             f"{g['failed'] + b['failed']:.0f}; load average {load[0]:.1f}"
             + (f"; {args.note}" if args.note else ""))
    append_row(
        f"| {time.strftime('%Y-%m-%d')} | serving | guarded predict (fedguard serve, ONNX Runtime) vs bare async "
        f"FastAPI endpoint (same ONNX model), max throughput, 1 uvicorn worker each, loopback, median of "
        f"{args.repeats}×{args.seconds:g} s | {g['rps']:.0f} req/s | {b['rps']:.0f} req/s | {ratio:.2f}x | {notes} | "
        f"{machine()} |"
    )


if __name__ == "__main__":
    main()
