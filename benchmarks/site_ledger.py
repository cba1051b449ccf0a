"""CPU per charge of site privacy ledgers, as a simulation's Ray actor uses them: many site files in one process.

Usage (from ``benchmarks/``)::

    python site_ledger.py [--sites 200] [--rounds 3]

Opens ``--sites`` site ledgers (``SiteLedger``: one SQLite file each, with its
audit chain) in one process, as each Ray actor of a simulation does, and charges
every site once per round the way the site's veto mod does
(``PrivacyLedger.record_reply``: the read of the site's charges and the new
charge in one transaction), then, as the baseline in the same run, the two
steps a reply took before (``charges`` then ``record_spent``, two transactions).
Prints milliseconds of CPU and wall time per charge for both and their ratio.
To compare with an older version, run this script with ``PYTHONPATH`` pointing
at that version's checkout (it needs ``SiteLedger``, ``Charge``, ``record_spent``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from privacy.ledger.base import Charge
from privacy.ledger.factory import SiteLedger


def _charge(site: int, rnd: int, steps: int) -> Charge:
    return Charge(f"site-{site}", "m" * 64, "run-1", rnd, "record", 1.1, 0.05, steps, 1e-5)


def _builder(site: int, rnd: int) -> Callable[[list[Charge]], list[Charge]]:
    """The reply's charge, from the steps already charged (what the site's veto mod derives)."""
    return lambda charged: [_charge(site, rnd, 8 + sum(c.steps for c in charged))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ledgers = [SiteLedger.open(Path(folder) / f"site-{i}.db") for i in range(args.sites)]
        for i, ledger in enumerate(ledgers):
            ledger.set_cap(f"site-{i}", 100.0, 1e-5, kind="record")
            ledger.record(_charge(i, 0, 8))  # warm: every engine has compiled its statements once
        results = {}
        for name in ("two transactions (charges, record_spent)", "one transaction (record_reply)"):
            cpu, wall = time.process_time(), time.perf_counter()
            for rnd in range(args.rounds):
                round_number = rnd + 1 + (args.rounds if name.startswith("one") else 0)
                for i, ledger in enumerate(ledgers):
                    if name.startswith("one") and hasattr(ledger, "record_reply"):
                        ledger.record_reply(f"site-{i}", "m" * 64, _builder(i, round_number), actor="site")
                    else:
                        before = sum(c.steps for c in ledger.charges(f"site-{i}", "m" * 64))
                        ledger.record_spent(_charge(i, round_number, 8 + before), actor="site")
            count = args.rounds * args.sites
            results[name] = (1e3 * (time.process_time() - cpu) / count, 1e3 * (time.perf_counter() - wall) / count)
        for ledger in ledgers:
            ledger.close()
    for name, (cpu_ms, wall_ms) in results.items():
        print(f"{name:42s} {cpu_ms:6.2f} ms CPU, {wall_ms:6.2f} ms wall per charge ({args.sites} site files)")
    (two, _), (one, _) = results.values()
    print(f"ratio (two ÷ one transaction): {two / one:.2f}x")


if __name__ == "__main__":
    main()
