"""Check that Ray places simulated sites on the GPU, and time the same run on the CPU beside it.

Usage: ``python benchmarks/gpu_sites.py [--sites 4] [--rounds 3] [--gpus-per-site 0.25] [--repeats 1]
[--out DIR] [-- EXTRA fedguard simulate FLAGS]``.

Runs ``fedguard simulate`` (defaults: DP-SGD, SecAgg+, watermark, signing,
registry) twice per repeat in fresh processes, alternating: once with every
site on the CPU and once with ``--gpus-per-site``. Each site reports where it
trained (``client.device.describe``: the torch device, the GPU's name and the
``CUDA_VISIBLE_DEVICES`` Ray gave its actor), and the run's outcome keeps it
per site (``site_devices``). The check fails (exit 1) unless every site of
the GPU run trained on CUDA and every site of the CPU run on the CPU.

Prints seconds per run for both, their ratio, and a results row; it writes
the row and both outcomes' device lines to ``--out`` (a device machine's
``$OUT``) rather than to ``RESULTS.md``, which lives on the developer's checkout.
Needs a machine with a CUDA GPU: on one without, ``fedguard simulate`` refuses
``--gpus-per-site`` with exit 2 before Ray starts.
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
from typing import Any

from results import machine  # benchmarks/results.py (scripts run from benchmarks/)

FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))


def simulate(home: Path, sites: int, rounds: int, gpus: float, extra: list[str]) -> dict[str, Any]:
    """One fresh ``fedguard simulate --json`` process; its outcome with the wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    argv = [FEDGUARD, "simulate", "--sites", str(sites), "--rounds", str(rounds), "--json",
            "--gpus-per-site", str(gpus), *extra]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"fedguard simulate --gpus-per-site {gpus} exited {done.returncode}")
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    outcome["wall_seconds"] = time.monotonic() - started
    return outcome


def placed(outcome: dict[str, Any], on_gpu: bool) -> list[str]:
    """The sites that trained somewhere other than asked (empty when the placement is right)."""
    devices: dict[str, str] = outcome.get("site_devices", {})
    wrong = [name for name, where in devices.items() if where.startswith("cuda") != on_gpu]
    return wrong if devices else ["(no site reported a device)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpus-per-site", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the row and the device lines")
    parser.add_argument("extra", nargs="*", help="more fedguard simulate flags, after --")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"cpu": [], "gpu": []}
    lines: list[str] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fedguard-gpu-") as tmp:
        for repeat in range(args.repeats):
            for leg, gpus in (("cpu", 0.0), ("gpu", args.gpus_per_site)):
                outcome = simulate(Path(tmp) / f"{leg}-{repeat}", args.sites, args.rounds, gpus, args.extra)
                seconds[leg].append(outcome["federation_seconds"])
                wrong = placed(outcome, on_gpu=leg == "gpu")
                if wrong:
                    failures.append(f"{leg} run {repeat}: not on the {leg.upper()}: {', '.join(wrong)}")
                line = (f"{leg} run {repeat}: {outcome['federation_seconds']:.1f} s federation, "
                        f"{outcome['wall_seconds']:.1f} s process, accuracy {outcome['accuracy']:.3f}; "
                        f"sites: {json.dumps(outcome.get('site_devices', {}))}")
                lines.append(line)
                print(line, flush=True)
    cpu, gpu = statistics.median(seconds["cpu"]), statistics.median(seconds["gpu"])
    row = (f"| {time.strftime('%Y-%m-%d')} | gpu_sites | {args.sites} sites × {args.rounds} rounds, "
           f"--gpus-per-site {args.gpus_per_site}: federation seconds | {gpu:.1f} s | {cpu:.1f} s (CPU) | "
           f"{gpu / cpu:.2f} | placement {'wrong' if failures else 'every site on CUDA'} | {machine()} |")
    print(f"\nGPU {gpu:.1f} s vs CPU {cpu:.1f} s per run (ratio {gpu / cpu:.2f})\n{row}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_sites.txt").write_text("\n".join([*lines, *failures, row]) + "\n")
    if failures:
        raise SystemExit("placement check failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
