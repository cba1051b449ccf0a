"""Throughput of simulated federations: fedguard's full stack, fedguard with SecAgg+ and DP off,
and plain Flower FedAvg, on the same synthetic site files, model and rounds, in one run.

Usage (from ``benchmarks/``)::

    python simulation.py --sites 50,200,1000 --rounds 3 [--per-site 200] [--timeout 1200] [--profile DIR]

For each number of sites, three variants run one after the other, each a fresh process:

* ``full``: ``fedguard simulate``'s defaults (SecAgg+, record-level DP ε=3 with σ calibrated per
  site, watermark, signing, registry);
* ``clear``: ``--secure-agg none --dp-epsilon 0`` (still fedguard's data validation, audit log,
  ledger, held-out evaluation and publication);
* ``plain``: ``benchmarks/plain_flower.py``: Flower's FedAvg, nothing else, on the ``full`` run's
  site files and held-out set.

The data are ``--dataset synthetic --partition iid`` with ``records = sites × per-site × 1.25``
(20 % is the coordinator's held-out set), so every site trains on ``--per-site`` records.

Measured, per variant (``simulation_driver.py`` and ``plain_flower.py`` stamp their phases with
``time.monotonic()``, one clock for all processes):

* ``training``: from the first training message to the last round's central evaluation; for
  fedguard from its ``training`` stage event, for plain Flower from its round-0 evaluation. It
  excludes process start, imports, data preparation, Ray start, fedguard's identify query (where
  each site calibrates σ) and the reference secure sum, and publication; those phases are reported
  apart. ``steady``: rounds 2..R only (round 1 also loads the ClientApp in each Ray actor for plain
  Flower, which fedguard did during its identify query).
* client-rounds/s = sites × rounds ÷ training seconds, on two clocks: wall clock, and the CPU time
  of the whole process tree (driver, Ray's raylet/GCS and its workers: ``/proc/<pid>/stat`` utime +
  stime, sampled every 0.2 s). With other jobs on the cores the CPU-time figure is the one to compare.
* peak memory: the largest sum of RSS over the process tree (shared pages counted per process).

Appends one row per number of sites to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results import append_row, machine  # benchmarks/results.py (scripts run from benchmarks/)

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FEATURES = 20


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return env


def _stat(pid: int) -> tuple[int, float, int, str] | None:
    """(parent pid, CPU seconds user+system, RSS bytes, command name) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
        fields = text.rsplit(")", 1)[1].split()
        comm = text[text.index("(") + 1:text.rindex(")")]
    except (OSError, IndexError, ValueError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE, comm


GROUPS = ("driver", "actors", "ray")
"""CPU time is also split by process: the driver (ServerApp, Flower's in-memory SuperLink and simulation
engine), the Ray actors running the sites' ClientApps, and Ray's own processes (raylet, GCS, idle workers)."""


@dataclass
class TreeSampler:
    """Samples the CPU time and RSS of a process and all its descendants until stopped."""

    root: int
    interval: float = 0.2
    cpu: dict[int, float] = field(default_factory=dict)
    group: dict[int, str] = field(default_factory=dict)
    series: list[tuple[float, float, dict[str, float]]] = field(default_factory=list)
    peak_rss: int = 0
    seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (stat := _stat(int(name))) is not None:
                stats[int(name)] = stat
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        # a tree member that outlived its parent is re-parented: keep following the pids already seen
        tree, todo = set(), [self.root, *(p for p in self.seen if p in stats)]
        while todo:
            pid = todo.pop()
            if pid in tree or pid not in stats:
                continue
            tree.add(pid)
            todo.extend(children.get(pid, ()))
        self.seen |= tree
        for pid in tree:
            self.cpu[pid] = stats[pid][1]
            comm = stats[pid][3]
            self.group[pid] = "driver" if pid == self.root else "actors" if comm.startswith("ray::ClientApp") else "ray"
        self.peak_rss = max(self.peak_rss, sum(stats[pid][2] for pid in tree))
        groups = {g: sum(c for p, c in self.cpu.items() if self.group[p] == g) for g in GROUPS}
        self.series.append((time.monotonic(), sum(self.cpu.values()), groups))

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def cpu_at(self, t: float, group: str = "") -> float:
        """The tree's (or a group's) cumulative CPU seconds at monotonic time ``t`` (linear between samples)."""
        before = [(ts, g[group] if group else c) for ts, c, g in self.series if ts <= t]
        after = [(ts, g[group] if group else c) for ts, c, g in self.series if ts > t]
        if not before:
            return after[0][1] if after else 0.0
        if not after:
            return before[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0)

    def stop(self) -> None:
        self._stop.set()

    def kill_leftovers(self) -> None:
        """End the processes of this tree still alive (Ray workers a killed run left), by pid."""
        for pid in self.seen:
            if _stat(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _measure(cmd: list[str], env: dict[str, str], timeout: float, log: Path) -> tuple[dict[str, Any] | None,
                                                                                    TreeSampler, float, float]:
    """Run ``cmd``, sample its process tree; (its last JSON stdout line or None, sampler, start, end)."""
    started = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=HERE)
        sampler = TreeSampler(proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            sampler.kill_leftovers()
            proc.kill()
            out = ""
        sampler.sample()
        sampler.stop()
        thread.join()
        sampler.kill_leftovers()
    ended = time.monotonic()
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text()[-3000:]
        print(f"  exit {proc.returncode}; stderr tail:\n{tail}", file=sys.stderr)
        return None, sampler, started, ended
    return json.loads(lines[-1]), sampler, started, ended


def _phases(marks: list[tuple[str, float]], sampler: TreeSampler) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds between consecutive marks."""
    phases = {}
    for (_, t0), (name, t1) in zip(marks, marks[1:], strict=False):
        phases[name] = {"wall": t1 - t0, "cpu": sampler.cpu_at(t1) - sampler.cpu_at(t0),
                        **{g: sampler.cpu_at(t1, g) - sampler.cpu_at(t0, g) for g in GROUPS}}
    return phases


def run_fedguard(variant: str, sites: int, rounds: int, records: int, tmp: Path, timeout: float,
                 profile: Path | None) -> dict[str, Any]:
    spec = {"variant": variant, "sites": sites, "rounds": rounds, "records": records, "features": FEATURES,
            "profile": str(profile) if profile else "",
            "profile_clients": str(profile.with_suffix(".clients")) if profile else ""}
    result, sampler, started, ended = _measure(
        [sys.executable, str(HERE / "simulation_driver.py"), json.dumps(spec)], _env(tmp / f"{variant}-{sites}"),
        timeout, tmp / f"{variant}-{sites}.log")
    if result is None:
        return {"failed": True, "seconds": ended - started, "peak_rss": sampler.peak_rss}
    events = result["events"]

    def at(stage: str) -> float:
        return next(e["t"] for e in events if e["event"] == "stage" and e["stage"] == stage)

    rounds_at = [e["t"] for e in events if e["event"] == "round"]
    marks = [("start", started), ("imports", result["imported"]), ("data", at("engine")),
             ("engine+identify", at("identified")), ("reference", at("training"))]
    marks += [(f"round{i + 1}", t) for i, t in enumerate(rounds_at)]
    marks += [("publish", result["finished"]), ("exit", ended)]
    return _summary(marks, sampler, sites, len(rounds_at), result, ended - started)


def run_plain(data_dir: str, sites: int, rounds: int, tmp: Path, timeout: float) -> dict[str, Any]:
    result, sampler, started, ended = _measure(
        [sys.executable, str(HERE / "plain_flower.py"), data_dir, str(rounds), str(sites)],
        _env(tmp / f"plain-{sites}"), timeout, tmp / f"plain-{sites}.log")
    if result is None:
        return {"failed": True, "seconds": ended - started, "peak_rss": sampler.peak_rss}
    evaluated = result["evaluated"]
    marks = [("start", started), ("imports", result["engine"]), ("engine", evaluated[0])]
    marks += [(f"round{i}", t) for i, t in enumerate(evaluated) if i > 0]
    marks += [("finish", result["finished"]), ("exit", ended)]
    return _summary(marks, sampler, sites, len(evaluated) - 1, result, ended - started)


def _summary(marks: list[tuple[str, float]], sampler: TreeSampler, sites: int, rounds: int,
             result: dict[str, Any], seconds: float) -> dict[str, Any]:
    phases = _phases(marks, sampler)
    per_round = [phases[f"round{i}"] for i in range(1, rounds + 1)]
    training = {clock: sum(p[clock] for p in per_round) for clock in ("wall", "cpu")}
    steady = {clock: sum(p[clock] for p in per_round[1:]) for clock in ("wall", "cpu")}
    return {
        "failed": False, "seconds": seconds, "cpu": sampler.series[-1][1], "peak_rss": sampler.peak_rss,
        "phases": phases, "training": training, "steady": steady, "accuracy": result.get("accuracy"),
        "rate_wall": sites * rounds / training["wall"], "rate_cpu": sites * rounds / training["cpu"],
        "steady_wall": sites * (rounds - 1) / steady["wall"] if rounds > 1 else float("nan"),
        "steady_cpu": sites * (rounds - 1) / steady["cpu"] if rounds > 1 else float("nan"),
        "run_dir": result.get("run_dir"),
    }


def _write_sites(sites: int, records: int, data_dir: Path) -> str:
    """The site files a fedguard run of these options writes (``--variants plain`` alone: no run wrote them)."""
    code = ("import sys; from pathlib import Path; from simulations.data.options import DataOptions; "
            "from simulations.data.sites import write_sites; from simulations.federation import SimulationConfig; "
            "write_sites(DataOptions.of(SimulationConfig(sites=int(sys.argv[1]), dataset='synthetic', "
            "partition='iid', records=int(sys.argv[2]), features=int(sys.argv[3]))), Path(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", code, str(sites), str(records), str(FEATURES), str(data_dir)], check=True,
                   cwd=HERE)
    return str(data_dir)


def _describe(name: str, r: dict[str, Any]) -> str:
    if r["failed"]:
        return f"{name}: FAILED or timed out after {r['seconds']:.0f} s"
    phases = ", ".join(f"{k} {v['wall']:.1f}/{v['cpu']:.1f} ({v['driver']:.1f}+{v['actors']:.1f}+{v['ray']:.1f})"
                       for k, v in r["phases"].items())
    return (f"{name}: {r['rate_wall']:.1f} client-rounds/s wall, {r['rate_cpu']:.1f} per CPU-s "
            f"(steady rounds 2+: {r['steady_wall']:.1f} wall, {r['steady_cpu']:.1f} per CPU-s); "
            f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB; whole process {r['seconds']:.0f} s wall, {r['cpu']:.0f} CPU-s; "
            f"acc {r['accuracy']:.3f}\n    phases (wall/CPU s (driver+actors+ray)): {phases}")


def _profile_report(path: Path) -> None:
    """The top of a cProfile (a file, or a folder of them: the sites' per-message profiles, merged)."""
    files = sorted(str(p) for p in path.glob("*.pstats")) if path.is_dir() else [str(path)]
    if not files:
        return
    print(f"== profile {path} ({len(files)} file(s))")
    stats = pstats.Stats(*files)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="50,200,1000", help="comma-separated numbers of sites")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-site", type=int, default=200, help="training records per site")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per variant before it is killed")
    parser.add_argument("--variants", default="full,clear,plain")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats of fedguard's driver here")
    parser.add_argument("--label", default="", help="words added to the rows' notes (e.g. 'before')")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to RESULTS.md")
    parser.add_argument("--out", type=Path, default=None, help="also write every figure and phase here (JSON)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    for sites in (int(s) for s in args.sites.split(",")):
        records = sites * args.per_site * 5 // 4
        load = os.getloadavg()[0]
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="fg-bench-") as name:
            tmp = Path(name)
            for variant in ("full", "clear"):
                if variant in variants:
                    print(f"[{time.strftime('%H:%M:%S')}] {sites} sites: fedguard {variant} …", file=sys.stderr)
                    profile = args.profile / f"{variant}-{sites}.pstats" if args.profile else None
                    if profile:
                        profile.parent.mkdir(parents=True, exist_ok=True)
                    results[variant] = run_fedguard(variant, sites, args.rounds, records, tmp, args.timeout, profile)
                    print("  " + _describe(variant, results[variant]), file=sys.stderr)
                    if profile and profile.exists():
                        _profile_report(profile)
                        _profile_report(profile.with_suffix(".clients"))
            if "plain" in variants:
                source = next((r["run_dir"] for r in results.values() if not r["failed"]), None)
                data_dir = str(Path(source) / "data") if source else _write_sites(sites, records, tmp / "data")
                print(f"[{time.strftime('%H:%M:%S')}] {sites} sites: plain Flower …", file=sys.stderr)
                results["plain"] = run_plain(data_dir, sites, args.rounds, tmp, args.timeout)
                print("  " + _describe("plain", results["plain"]), file=sys.stderr)
        load = max(load, os.getloadavg()[0])
        _record(args, sites, records, results, load)
        if args.out:
            previous = json.loads(args.out.read_text()) if args.out.exists() else {}
            args.out.write_text(json.dumps({**previous, str(sites): {"load": load, **results}}, indent=1))


def _record(args: argparse.Namespace, sites: int, records: int, results: dict[str, dict[str, Any]],
            load: float) -> None:
    def rate(name: str, key: str) -> str:
        r = results.get(name)
        return "-" if r is None or r["failed"] else f"{r[key]:.1f}"

    full, plain = results.get("full"), results.get("plain")
    ok = full is not None and plain is not None and not full["failed"] and not plain["failed"]
    ratio = f"{plain['steady_cpu'] / full['steady_cpu']:.2f}x" if ok and full and plain else "-"
    mem = ", ".join(f"{n} {r['peak_rss'] / 2**30:.1f}" for n, r in results.items())
    wall = ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in results.items())
    notes = (f"client-rounds per CPU-s of the process tree in rounds 2–{args.rounds} (round 1 of plain Flower "
             f"carries Ray's start; ratio = plain ÷ full, >1: fedguard slower); per CPU-s clear "
             f"{rate('clear', 'steady_cpu')}; wall clock rounds 2+: full {rate('full', 'steady_wall')}, clear "
             f"{rate('clear', 'steady_wall')}, plain {rate('plain', 'steady_wall')}/s; fedguard rounds 1–"
             f"{args.rounds} per CPU-s: full {rate('full', 'rate_cpu')}, clear {rate('clear', 'rate_cpu')}; "
             f"peak RSS GiB {mem}; whole runs {wall}; load avg {load:.1f}" + (f"; {args.label}" if args.label else ""))
    row = (f"| {time.strftime('%Y-%m-%d')} | simulation | client-rounds/s, full stack (SecAgg+, DP ε=3) vs plain "
           f"Flower FedAvg ({sites} sites × {args.per_site} records, synthetic iid {records}×{FEATURES}, "
           f"{args.rounds} rounds) | {rate('full', 'steady_cpu')} | {rate('plain', 'steady_cpu')} | {ratio} | {notes} "
           f"| {machine()} |")
    print(row)
    if not args.no_record:
        append_row(row)


if __name__ == "__main__":
    main()
