"""Start-up time of ``fedguard`` commands that neither train nor serve, against the eager CLI it replaced.

Usage: ``python benchmarks/cli_startup.py [--repeats 7] [--baseline-rev bd60e16] [--no-results]``

For each command (``--help``, ``site list``, ``models list``, ``keys create``,
``privacy ledger``) it runs fresh ``python -m fedguard.cli`` processes in a
temporary ``FEDGUARD_HOME`` holding a federation, a registry and one enrolled
site (so ``site list`` has a row), and takes the median wall time. The
baseline runs the same commands, in the same invocation and interleaved with
ours, from the source tree at ``--baseline-rev`` (by default the last commit
whose ``fedguard/cli.py`` imported every sub-app, and with them torch, Flower,
Ray, Opacus and TenSEAL, at start-up), extracted with ``git archive``. The
floor is ``python -c "import typer, rich.console"``: what any Typer CLI pays.
``privacy ledger --ledger FILE`` on a ledger holding one charge is measured
too: composing ε needs Opacus' accountant, whose package imports torch.

It prints each median, the ratio ours ÷ baseline, and the largest cumulative
import costs of each of our commands from ``python -X importtime``, and
appends one row per command to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from results import append_row, machine  # noqa: E402  # benchmarks/results.py (scripts run from benchmarks/)

COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "site list": ["site", "list"],
    "models list": ["models", "list"],
    "keys create": ["keys", "create", "--json"],
    "privacy ledger": ["privacy", "ledger"],
}
BASELINE_REV = "bd60e16"
"""The last commit before the lazy CLI (``fedguard/cli.py`` mounted every sub-app eagerly)."""
HEAVY = ("torch", "flwr", "ray", "opacus", "tenseal", "sqlmodel", "alembic", "cryptography", "numpy")


def _env(home: Path, source: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDGUARD_DATABASE_URL", "PYTHONPATH")}
    env.update(FEDGUARD_HOME=str(home), PYTHONPATH=str(source), COLUMNS="80", FLWR_TELEMETRY_ENABLED="0")
    return env


def _run(args: list[str], env: dict[str, str], *, python_args: tuple[str, ...] = ()) -> tuple[float, str]:
    """Wall seconds of one fresh ``python -m fedguard.cli ARGS`` process, and its stderr."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *python_args, "-m", "fedguard.cli", *args], env=env, cwd=env["PYTHONPATH"],
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fedguard {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stderr


def _floor(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import typer, rich.console"], env=env, check=True)
    return time.perf_counter() - start


def _prepare(home: Path, source: Path) -> Path:
    """A federation with one enrolled site in ``home``, and a site ledger file holding one charge."""
    env = _env(home, source)
    for args in (["coordinator", "init", "--federation", "bench"],
                 ["site", "enroll", "st-marys-hospital", "--out", str(home.parent / "site.bundle")]):
        _run(args, env)
    ledger_file = home.parent / "site-ledger.db"
    script = ("import sys; from privacy.ledger import Charge, SiteLedger; book = SiteLedger.open(sys.argv[1]); "
              "book.record(Charge('st-marys-hospital', 'ab' * 32, 'run-1', 1, 'record', 1.1, 0.05, 40, 1e-5)); "
              "book.close()")
    subprocess.run([sys.executable, "-c", script, str(ledger_file)], env=env, check=True)
    return ledger_file


def _extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _top_imports(stderr: str, count: int = 4) -> str:
    """The ``count`` costliest imports made directly by the program (cumulative µs, ``-X importtime``)."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.split("|")
            depth_one = name.startswith(" ") and not name.startswith("   ")  # imported by the program itself
            if cumulative.strip().isdigit() and depth_one:
                rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return ", ".join(f"{name} {us / 1e6:.2f} s" for us, name in rows[:count])


def _heavy_loaded(args: list[str], env: dict[str, str]) -> list[str]:
    probe = ("import sys, runpy; sys.argv = ['fedguard', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('fedguard.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True, timeout=300)
    return [m for m in done.stderr.strip().splitlines()[-1].split(",") if m] if done.stderr.strip() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes per command and variant")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the eager CLI")
    parser.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fedguard-cli-bench-") as tmp:
        root = Path(tmp)
        old_source = _extract(args.baseline_rev, root / "baseline")
        ours_home, old_home = root / "ours" / "home", root / "old" / "home"
        ledger_file = _prepare(ours_home, REPO)
        _prepare(old_home, old_source)
        commands = {**COMMANDS, "privacy ledger (1 charge)": ["privacy", "ledger", "--ledger", str(ledger_file)]}
        ours_env, old_env = _env(ours_home, REPO), _env(old_home, old_source)
        _run(COMMANDS["--help"], old_env)  # compile the extracted tree's bytecode (the eager CLI imports it all)
        for cmd in commands.values():  # and ours, command by command
            _run(cmd, ours_env)
        times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in commands}
        floor = []
        for _ in range(args.repeats):  # interleaved: ours, baseline, per command, per repeat
            floor.append(_floor(ours_env))
            for name, cmd in commands.items():
                times[name][0].append(_run(cmd, ours_env)[0])
                times[name][1].append(_run(cmd, old_env)[0])
        floor_s = statistics.median(floor)
        for name in commands:
            print(f"fedguard {name}: ours {[round(t, 2) for t in times[name][0]]} s, "
                  f"eager {[round(t, 2) for t in times[name][1]]} s", flush=True)
        rows = []
        for name, cmd in commands.items():
            ours, old = (statistics.median(t) for t in times[name])
            top = _top_imports(_run(cmd, ours_env, python_args=("-X", "importtime"))[1])
            heavy = _heavy_loaded(cmd, ours_env)
            print(f"fedguard {name:26s} ours {ours:5.2f} s  eager {old:5.2f} s  ratio {ours / old:.2f}x  "
                  f"(min {min(times[name][0]):.2f} s)\n    top imports: {top}\n    loaded: {', '.join(heavy) or '-'}")
            rows.append((name, ours, old, min(times[name][0]), top, heavy))
        print(f"floor (python -c 'import typer, rich.console'): {floor_s:.2f} s; load average {load:.1f}")
    if args.no_results:
        return
    cores = os.cpu_count() or 1
    shared = (f"; load average {load:.1f} on {cores} cores at the start: other jobs shared the cores"
              if load > cores / 2 else "")
    for name, ours, old, best, top, heavy in rows:
        append_row(
            f"| {time.strftime('%Y-%m-%d')} | cli_startup | `fedguard {name}` wall time, fresh process, "
            f"median of {args.repeats} | {ours:.2f} s | {old:.2f} s (eager CLI at {args.baseline_rev}) "
            f"| {ours / old:.2f}x | min {best:.2f} s; floor (Python + Typer + Rich) {floor_s:.2f} s; "
            f"top imports: {top}; loaded: {', '.join(heavy) or 'none of ' + '/'.join(HEAVY)}{shared} "
            f"| {machine()} |"
        )


if __name__ == "__main__":
    main()
