"""The SuperNode's runtime options that remove Flower's per-message overhead (one place).

Out of the box a deployed round is slow for two reasons, both measured here
(DESIGN §10): every message starts a fresh ``flwr-clientapp`` process that
imports torch and Opacus (seconds each), and an idle SuperNode sleeps 3 s
between pulls (``flwr/supernode/start_client_internal.py``), while its
SuperExec polls for tasks once a second. fedguard's site agent therefore runs
``python -m client.runtime`` instead of ``flower-supernode``: the same
arguments, plus

* ``--isolation process`` and a fedguard-owned warm executor
  (:mod:`client.runtime`) that imports the ClientApp once and forks a child
  per message (Flower's own ``run_clientapp`` runs in the child, so isolation
  between messages is kept);
* an idle pull interval of :data:`SUPERNODE_POLL_SECONDS` instead of 3 s;
* :data:`EXECUTOR_POLL_SECONDS` for the executor's task polling
  (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, a documented Flower variable).

This module lives in ``lifecycle`` because the site side may not import
``coordinator``; the SuperLink's options are in ``coordinator.runtime_options``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

SUPERNODE_POLL_SECONDS = 0.1
"""Idle pull interval of a SuperNode (Flower hard-codes 3 s)."""

EXECUTOR_POLL_SECONDS = 0.05
"""Task polling interval of the site's executor (Flower's default is 1 s)."""

PRELOAD_MODULES = ("torch", "opacus", "client.app")
"""Imported once by the warm executor, before it forks a child per message."""

QUIET_ENV: Mapping[str, str] = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
"""Nothing leaves a site unasked (DESIGN §4)."""


def supernode_command(python: str = sys.executable) -> list[str]:
    """The program to run in place of ``flower-supernode`` (it accepts the same arguments)."""
    return [python, "-m", "client.runtime"]


def plain_supernode_command() -> list[str]:
    """Flower's own SuperNode, out of the box (the benchmark's baseline)."""
    return ["flower-supernode"]


def supernode_flags() -> list[str]:
    """Extra ``flower-supernode`` flags for every SuperNode (fast or not).

    None today: a SuperNode never ``uv sync``\ s a run's dependencies unless
    given ``--allow-runtime-dependency-installation`` (Flower 1.41's default),
    which a site must not pass (it would fetch packages, e.g. a CUDA torch).
    """
    return []


def supernode_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a SuperNode process: ``base`` (default: ours) plus the quiet/fast variables."""
    env = dict(os.environ if base is None else base)
    env.update(QUIET_ENV)
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(EXECUTOR_POLL_SECONDS)
    return env
