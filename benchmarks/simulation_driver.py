"""One fedguard simulation for benchmarks/simulation.py, in its own process, with timestamps.

Run as ``python benchmarks/simulation_driver.py '<json>'`` with keys ``sites``, ``rounds``,
``records``, ``features``, ``variant`` (``full``: the defaults — SecAgg+, DP ε=3, watermark,
signing; ``clear``: ``--secure-agg none --dp-epsilon 0``) and optionally ``profile`` (a path:
cProfile of this driver process, written with ``pstats``' own format). Prints one JSON line:
the progress events with ``time.monotonic()`` stamps (one clock for every process on Linux,
so the parent can match them with its CPU samples), the accuracy and the run directory.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import cProfile  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402


def _profile_threads(profiles: list[cProfile.Profile]) -> None:
    """Profile every thread started from now on (the ServerApp runs in one of Flower's threads)."""

    def start(*_: Any) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()  # replaces this hook in the calling thread

    threading.setprofile(start)


def _profiling_mod(folder: str) -> Any:
    """A ClientApp mod profiling in CPU time what runs below it (protection, ledger, site DP, training) per message."""

    def profiling_mod(msg: Any, context: Any, call_next: Any) -> Any:
        profile = cProfile.Profile(time.thread_time)  # CPU time of the actor's thread: the benchmark's clock
        profile.enable()
        try:
            return call_next(msg, context)
        finally:
            profile.disable()
            profile.dump_stats(f"{folder}/{os.getpid()}-{time.monotonic_ns()}.pstats")

    return profiling_mod


def main() -> None:
    spec = json.loads(sys.argv[1])
    import simulations.federation as federation
    from simulations.federation import SimulationConfig, run

    if spec.get("profile_clients"):
        os.makedirs(spec["profile_clients"], exist_ok=True)
        engine = federation._simulate
        mod = _profiling_mod(spec["profile_clients"])

        def profiled(*args: Any, mods: Any = (), **kwargs: Any) -> Any:  # the run's own mods (attacks) stay
            return engine(*args, mods=[*mods, mod], **kwargs)

        federation._simulate = profiled

    imported = time.monotonic()
    events: list[dict[str, Any]] = []

    def observer(event: str, payload: Mapping[str, Any]) -> None:
        events.append({"t": time.monotonic(), "event": event, "stage": payload.get("stage"),
                       "round": payload.get("round"), "sites": payload.get("sites")})

    clear = {"secure_agg": "none", "dp_epsilon": 0.0} if spec["variant"] == "clear" else {}
    cfg = SimulationConfig(sites=spec["sites"], rounds=spec["rounds"], dataset="synthetic", partition="iid",
                           records=spec["records"], features=spec["features"], **clear)  # type: ignore[arg-type]
    profiles: list[cProfile.Profile] = []
    if spec.get("profile"):
        _profile_threads(profiles)
        profiles.append(cProfile.Profile())
        profiles[-1].enable()
    outcome = run(cfg, observer)
    if profiles:
        profiles[-1].disable()
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(spec["profile"])
    print(json.dumps({"started": STARTED, "imported": imported, "finished": time.monotonic(), "events": events,
                      "accuracy": outcome["accuracy"], "run_dir": outcome["run_dir"]}))


if __name__ == "__main__":
    main()
