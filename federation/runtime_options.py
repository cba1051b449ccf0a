"""Runtime plumbing both sides of a deployment share: quiet environment, fast object pulls, tracing.

Flower's runtime components (SuperLink, SuperNode, ServerApp, ClientApp)
pull message objects with a slow backoff and may phone home; both the
coordinator's ServerApp grid (``coordinator.grid``) and the site's warm
executor (``client.runtime``) apply the options here. The SuperNode's own
options live in :mod:`client.runtime_options`, the SuperLink's in
``coordinator.runtime_options``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

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
