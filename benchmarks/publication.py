"""Publishing one model: the ML-BOM's environment part built once per process, against once per BOM.

``lifecycle.packaging.publish_model`` writes the weights, the ML-BOM (with one
component per installed package, ~160 here), the model card and the
signature, registers the version and evaluates its gates. Since 2026-12-04
the installed-package list (per ``sys.path``), the code version and the
packages' BOM components are built once per process; the baseline clears
those caches before every publication, which is what each publication did
before. Both run in this process on the same registry, interleaved, and the
row gives the medians of ``--repeats`` publications each.

    python benchmarks/publication.py --repeats 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from results import append_row, machine  # benchmarks/results.py (scripts run from benchmarks/)

REPO = Path(__file__).resolve().parent.parent


def _clear() -> None:
    from lifecycle.bom import document, environment

    environment._installed_packages.cache_clear()
    environment.code_version.cache_clear()
    document._library.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="publications per variant")
    parser.add_argument("--no-row", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedguard-publish-bench-") as tmp:
        os.environ["FEDGUARD_HOME"] = str(Path(tmp) / "home")
        sys.path.insert(0, str(REPO))  # tests.conftest.make_publication: the test suite's small model
        from lifecycle.packaging import publish_model
        from lifecycle.registry import Registry
        from tests.conftest import make_publication

        registry = Registry.open()
        publish_model(registry, make_publication())  # keys, schema, imports: not measured
        ours, baseline = [], []
        for seed in range(args.repeats):  # interleaved, so that a load change hits both alike
            started = time.perf_counter()
            publish_model(registry, make_publication(seed=seed))
            ours.append(time.perf_counter() - started)
            _clear()
            started = time.perf_counter()
            publish_model(registry, make_publication(seed=seed))
            baseline.append(time.perf_counter() - started)
        registry.engine.dispose()
    mine, theirs = statistics.median(ours), statistics.median(baseline)
    load = os.getloadavg()[0]
    print(f"publish_model: {mine:.3f} s (environment built once per process) vs {theirs:.3f} s (built per BOM): "
          f"{mine / theirs:.2f}x; load average {load:.1f}")
    if not args.no_row:
        append_row(f"| {date.today().isoformat()} | publication | `publish_model` of a small MLP (signed ML-BOM with "
                   f"every installed package, registry rows, gates), median of {args.repeats} | {mine:.3f} s | "
                   f"{theirs:.3f} s (BOM environment rebuilt per publication, as before 2026-12-04) | "
                   f"{mine / theirs:.2f}x | min {min(ours):.3f} s vs {min(baseline):.3f} s; interleaved in one "
                   f"process; load average {load:.1f} | {machine()} |")


if __name__ == "__main__":
    main()
