"""Time ``fedguard simulate`` (defaults: DP-SGD, watermark, signing, registry) against
plain Flower FedAvg on the same model, data split and rounds, in one run.

Usage: ``python benchmarks/simulation.py [--repeats 3] [--sites 5] [--rounds 5]``.
Prints both medians and their ratio, and appends a row to ``benchmarks/RESULTS.md``.
Each measurement is a whole fresh process (imports and Ray start included), as a user sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_row, machine  # benchmarks/results.py (scripts run from benchmarks/)

HERE = Path(__file__).resolve().parent
FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return env


def run_fedguard(home: Path, sites: int, rounds: int, *extra: str) -> dict[str, float | str]:
    started = time.monotonic()
    out = subprocess.run([FEDGUARD, "simulate", "--sites", str(sites), "--rounds", str(rounds), "--json", *extra],
                         env=_env(home), capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": time.monotonic() - started, "accuracy": result["accuracy"], "run_dir": result["run_dir"]}


def run_plain(data_dir: str, home: Path, sites: int, rounds: int) -> dict[str, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(HERE / "plain_flower.py"), data_dir, str(rounds), str(sites)],
                         env=_env(home), capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": time.monotonic() - started, "accuracy": result["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ours, clear, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            ours.append(run_fedguard(Path(tmp) / f"fg{i}", args.sites, args.rounds))
            clear.append(run_fedguard(Path(tmp) / f"clear{i}", args.sites, args.rounds, "--secure-agg", "none"))
            data_dir = str(Path(str(ours[-1]["run_dir"])) / "data")
            plain.append(run_plain(data_dir, Path(tmp) / f"plain{i}", args.sites, args.rounds))
    t_ours, t_clear, t_plain = (statistics.median(float(r["seconds"]) for r in runs) for runs in (ours, clear, plain))
    acc_ours = statistics.median(float(r["accuracy"]) for r in ours)
    acc_plain = statistics.median(float(r["accuracy"]) for r in plain)
    print(f"fedguard simulate (defaults: DP ε=3, SecAgg+, watermark, signed): median {t_ours:.1f} s, "
          f"accuracy {acc_ours:.3f}")
    print(f"fedguard simulate --secure-agg none:                              median {t_clear:.1f} s")
    print(f"plain Flower FedAvg (no DP, no secure aggregation, no watermark):  median {t_plain:.1f} s, "
          f"accuracy {acc_plain:.3f}")
    print(f"ratio fedguard / plain Flower: {t_ours / t_plain:.2f}x (defaults), {t_clear / t_plain:.2f}x "
          f"(--secure-agg none)  ({args.repeats} runs each, {args.sites} sites, {args.rounds} rounds)")
    row = (f"| {time.strftime('%Y-%m-%d')} | simulation | fedguard simulate (defaults, SecAgg+) vs plain Flower "
           f"FedAvg ({args.sites} sites, {args.rounds} rounds, {args.repeats} runs) | {t_ours:.1f} s | {t_plain:.1f} s "
           f"| {t_ours / t_plain:.2f}x | --secure-agg none: {t_clear:.1f} s = {t_clear / t_plain:.2f}x; "
           f"acc {acc_ours:.3f} vs {acc_plain:.3f} | {machine()} |")
    append_row(row)


if __name__ == "__main__":
    main()
