"""Accuracy against privacy: breast cancer, 10 sites (Dirichlet α=0.5), SecAgg+ on.

Record-level DP-SGD (Opacus, per-site ε) and site-level DP-FedAvg (distributed
noise, ε per site over the run) at ε ∈ {1, 3, 8, ∞}; ∞ is one run with no DP
at all, the baseline of both rows. No watermark, so the numbers show DP's
cost alone. Prints a table, writes ``benchmarks/privacy_accuracy.png`` and
appends the table to ``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/privacy_accuracy.py [--sites 10] [--rounds 5] [--seed 42]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_section, machine  # benchmarks/results.py (scripts run from benchmarks/)

HERE = Path(__file__).resolve().parent
FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))
EPSILONS = (1.0, 3.0, 8.0)


def simulate(home: Path, args: argparse.Namespace, record: float, site: float) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    cmd = [FEDGUARD, "simulate", "--sites", str(args.sites), "--rounds", str(args.rounds), "--seed", str(args.seed),
           "--alpha", "0.5", "--watermark", "none", "--dp-epsilon", str(record), "--site-epsilon", str(site),
           "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["accuracy"])


def plot(rows: dict[str, list[float]], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [*(f"ε={e:g}" for e in EPSILONS), "no DP"]
    for name, values in rows.items():
        ax.plot(labels, [*values, baseline], marker="o", label=name)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("breast cancer, 10 sites (α=0.5), SecAgg+, 5 rounds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = simulate(Path(tmp) / "none", args, 0.0, 0.0)
        rows = {
            "record-level (DP-SGD)": [simulate(Path(tmp) / f"r{e}", args, e, 0.0) for e in EPSILONS],
            "site-level (DP-FedAvg)": [simulate(Path(tmp) / f"s{e}", args, 0.0, e) for e in EPSILONS],
        }
    header = "| DP kind | " + " | ".join(f"ε={e:g}" for e in EPSILONS) + " | ε=∞ (no DP) |"
    lines = [header, "|---" * (len(EPSILONS) + 2) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {baseline:.3f} |"
              for name, values in rows.items()]
    print("\n".join(lines))
    plot(rows, baseline, HERE / "privacy_accuracy.png")
    append_section(
            f"### privacy_accuracy ({time.strftime('%Y-%m-%d')}, {machine()}, {time.monotonic() - started:.0f} s)\n\n"
            f"`python benchmarks/privacy_accuracy.py --sites {args.sites} --rounds {args.rounds} --seed {args.seed}`: "
            f"test accuracy, breast cancer, {args.sites} sites α=0.5, SecAgg+, no watermark; plot in "
            "`benchmarks/privacy_accuracy.png`.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
