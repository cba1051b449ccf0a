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
* object pulls retried every ≤0.25 s (:data:`OBJECT_PULL_BACKOFF`) and the
  run's FAB unpacked once per hash (:func:`client.runtime.cached_fab_install`).

This module lives in ``lifecycle`` because the site side may not import
``coordinator``; the SuperLink's options are in ``coordinator.runtime_options``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

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

OBJECT_PULL_BACKOFF: Mapping[str, Any] = {"initial_backoff": 0.02, "backoff_cap": 0.25, "max_tries_per_object": None}
"""How every runtime component retries pulling a message's objects that have not arrived yet.

Flower 1.41 stores a message before its objects (arrays, records) have
arrived, and the puller (SuperNode from the SuperLink, ClientApp from its
SuperNode, ServerApp from the SuperLink) retries with a 1 s initial backoff
that doubles up to 10 s (``flwr.supercore.constant.PULL_INITIAL_BACKOFF``):
measured here, 1–3 s lost at each of the three hops of every exchange.
Retrying a loopback/LAN pull every ≤0.25 s costs nothing; the tries are
unbounded so that only Flower's overall limit (``PULL_MAX_TIME``, 2 h)
applies, as before (500 tries at ≤0.25 s would give up after ~2 min).
"""

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


TRACE_ENV = "FEDGUARD_RUNTIME_TRACE"
"""Names a file to which every runtime component appends one JSON line per stage (off when unset).

A diagnostic for round latency (docs/runs.md): the ServerApp's grid, the
SuperNode and the warm executor log wall-clock timestamps of their stages
(push, first/last reply, pull, fork, FAB unpack, app load, handler, reply
push), never any content. ``benchmarks/deployment.py --trace DIR`` sets it.
"""


def trace(component: str, stage: str, **fields: object) -> None:
    """Append ``{"t", "pid", "component", "stage", **fields}`` to :data:`TRACE_ENV`'s file, if set."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "component": component, "stage": stage, **fields},
                      default=str)
    with open(path, "a", encoding="utf-8") as handle:  # one short append per line: atomic on POSIX
        handle.write(line + "\n")


def trace_rpcs(component: str) -> None:
    """With :data:`TRACE_ENV` set, trace every Flower request this process makes: method, seconds, request bytes.

    Flower 1.41's runtime components talk protobuf over HTTP
    (``flwr.supercore.protobuf.client.ProtobufClient``), one request per
    message part; the per-request table (``benchmarks/deployment.py --report``)
    shows where an exchange's time goes between processes. Idempotent; a no-op
    when tracing is off.
    """
    if not os.environ.get(TRACE_ENV):
        return
    from flwr.supercore.protobuf import client as protobuf_client

    send = protobuf_client.ProtobufClient._unary_unary
    if getattr(send, "fedguard_traced", False):
        return

    def traced(self: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return send(self, **kwargs)
        finally:
            request = kwargs.get("request")
            trace(component, "rpc", method=str(kwargs.get("rpc_method", "?")).rsplit("/", 1)[-1], start=started,
                  seconds=round(time.time() - started, 4), bytes=request.ByteSize() if request is not None else 0)

    traced.fedguard_traced = True  # type: ignore[attr-defined]
    protobuf_client.ProtobufClient._unary_unary = traced  # type: ignore[method-assign]


def with_fast_pulls(pull: Callable[..., Any]) -> Callable[..., Any]:
    """``pull`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``) with :data:`OBJECT_PULL_BACKOFF`.

    Arguments a caller passes explicitly win. Idempotent.
    """
    if getattr(pull, "fedguard_fast_pulls", False):
        return pull

    def fast(*args: Any, **kwargs: Any) -> Any:
        return pull(*args, **{**OBJECT_PULL_BACKOFF, **kwargs})

    fast.fedguard_fast_pulls = True  # type: ignore[attr-defined]
    fast.__wrapped__ = pull  # type: ignore[attr-defined]
    return fast


def use_fast_pulls(module: Any, name: str) -> None:
    """Rebind ``module.name`` (a Flower module's imported pull function) to :func:`with_fast_pulls`."""
    setattr(module, name, with_fast_pulls(getattr(module, name)))
