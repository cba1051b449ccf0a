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
* a pull interval of :data:`SUPERNODE_POLL_SECONDS` instead of 3 s while a
  run exchanges messages (:data:`SUPERNODE_IDLE_POLL_SECONDS` when idle);
* an executor woken through a pipe by the SuperNode when a message arrives
  (:data:`EXECUTOR_POLL_SECONDS` polling, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``,
  only without the pipe);
* object pulls retried every ≤0.25 s (:data:`federation.runtime_options.OBJECT_PULL_BACKOFF`) and the
  run's FAB unpacked once per hash (:func:`client.runtime.cached_fab_install`).

The SuperLink's options are in ``coordinator.runtime_options``; what both
sides share (quiet environment, object pulls, tracing) in
:mod:`federation.runtime_options`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from federation.runtime_options import QUIET_ENV

SUPERNODE_POLL_SECONDS = 0.1
"""Pull interval of a SuperNode while a run is exchanging messages (Flower hard-codes 3 s)."""

SUPERNODE_ACTIVE_SECONDS = 30.0
"""How long after its last message a SuperNode keeps pulling every :data:`SUPERNODE_POLL_SECONDS`."""

SUPERNODE_IDLE_POLL_SECONDS = 1.0
"""Pull interval of an idle SuperNode (no message for :data:`SUPERNODE_ACTIVE_SECONDS`)."""

EXECUTOR_POLL_SECONDS = 0.05
"""Task polling interval of an executor started without the SuperNode's wake pipe (Flower's default: 1 s)."""

EXECUTOR_IDLE_POLL_SECONDS = 1.0
"""With the wake pipe, the executor still asks for a task this often (a safety net, Flower's default)."""

PRELOAD_MODULES = ("torch", "torch._dynamo", "torch.profiler", "opacus", "client.app")
"""Imported once by the warm executor, before it forks a child per message.

``torch._dynamo`` is imported lazily by the first ``torch.optim.Optimizer``
a process builds (``Optimizer.__init__`` is wrapped by ``_disable_dynamo``),
and ``torch.profiler`` by the first optimizer step: without them here every
forked child paid ~0.5 s of CPU importing ~190 modules before its first
DP-SGD step, which was most of a training message's handler time
(``tests/client/test_runtime.py``).
"""

def supernode_command(python: str = sys.executable) -> list[str]:
    """The program to run in place of ``flower-supernode`` (it accepts the same arguments)."""
    return [python, "-m", "client.runtime"]


def plain_supernode_command() -> list[str]:
    """Flower's own SuperNode, out of the box (the benchmark's baseline)."""
    return ["flower-supernode"]


def supernode_flags() -> list[str]:
    r"""Extra ``flower-supernode`` flags for every SuperNode (fast or not).

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
