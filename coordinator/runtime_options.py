"""The SuperLink's runtime options that remove Flower's per-round overhead (one place).

Measured here (DESIGN §10, ``benchmarks/deployment.py``): the ServerApp's
HTTP grid sleeps 3 s between pulls while it waits for replies
(``flwr/superlink/grid/http_grid.py``), and a SecAgg+ round is four
exchanges; the SuperLink's SuperExec polls for the ServerApp task once a
second. fedguard's ServerApp wraps its grid (:class:`coordinator.grid.ResponsiveGrid`)
to pull every :data:`GRID_POLL_SECONDS`; the SuperExec keeps Flower's 1 s
(:data:`SUPEREXEC_POLL_SECONDS`). The SuperNode's options live in
``client.runtime_options``; what both sides share in ``federation.runtime_options``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from federation.runtime_options import QUIET_ENV

GRID_POLL_SECONDS = 0.05
"""How often the ServerApp pulls replies while it waits (Flower's HTTP grid: 3 s)."""

GRID_POLL_ENV = "FEDGUARD_GRID_POLL_SECONDS"
"""Overrides :data:`GRID_POLL_SECONDS` in the SuperLink's environment (the benchmark's baseline sets 3)."""


def grid_poll_seconds() -> float:
    """The ServerApp's reply polling interval: :data:`GRID_POLL_ENV` if set, else :data:`GRID_POLL_SECONDS`."""
    raw = os.environ.get(GRID_POLL_ENV)
    try:
        return min(max(float(raw), 0.01), 60.0) if raw else GRID_POLL_SECONDS
    except ValueError:
        return GRID_POLL_SECONDS

SUPEREXEC_POLL_SECONDS = 1.0
"""How often the SuperLink's SuperExec polls for a new ServerApp task (Flower's default, kept).

It decides only how soon a submitted run starts (once per run, not per
round); polling every 0.1 s cost the SuperLink ten requests a second for the
whole run, CPU that the round's own requests then waited for on a 2-core
coordinator (``benchmarks/deployment.py``).
"""


def superlink_flags() -> list[str]:
    """Extra ``flower-superlink`` flags: never ``uv sync`` a run's dependencies (DESIGN §10)."""
    return ["--disable-runtime-dependency-installation"]


def superlink_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the SuperLink process: ``base`` (default: ours) plus the quiet/fast variables."""
    env = dict(os.environ if base is None else base)
    env.update(QUIET_ENV)
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(SUPEREXEC_POLL_SECONDS)
    return env
