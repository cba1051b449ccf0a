"""Reject malformed site updates before they reach aggregation; audit every rejection.

One bad reply must not poison a round, nor abort it. :class:`UpdateValidationStrategy`
wraps the run's strategy (outermost, around the lineage tracker) and checks
each training reply against the global model the round started from:

* **clear updates** (``secure-aggregation none``; the bound is also sent in
  the train config as ``clip-norm``, and sites clip to it,
  ``client.protection``): the arrays have exactly
  the global model's names, shapes and dtypes, every value is finite, the
  update ``local − global`` has L2 norm at most the configured clipping bound
  (``clip-norm``; with site-level DP the bound that leaves room for the
  noise, :func:`coordinator.strategies.builder.protection_bound`), and the example
  weight is in ``(0, max-weight]``;
* **SecAgg+**: the masked payload is exactly one 1-D ``uint32`` vector of the
  model's size + 1 (the norm cannot be seen; the site's mod clips it);
* **CKKS**: no clear weights, a ciphertext of ``uint8`` chunks, made for the
  model's size + 2.

A failing reply is replaced by an error reply (code :data:`UPDATE_REJECTED`,
reason ``update rejected by the coordinator: …``), so the tracker reports it
among the round's failures and never credits the site, secure aggregation
treats the site as dropped (its mask is removed from the sum), and the other
sites' updates aggregate as usual. Each rejection is also passed to
``on_reject``; :func:`audit_rejections` writes it to the registry's audit
trail (site, node, run, round, reason: never the update itself).

Notes
-----
Bounding each contribution's norm is what bounds its influence on FedAvg
and makes DP noise calibration meaningful (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"); rejecting non-finite
updates follows the input checks of Flower's ``DifferentialPrivacy*``
wrappers and Blanchard et al. 2017 ("Machine Learning with Adversaries").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator import logger
from federation.protocol import CLIP_NORM, ProtocolError, SiteReply
from lifecycle import audit
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry
from privacy.he.instruction import CIPHERTEXT_RECORD, HE_RECORD
from privacy.records import config_record, metric_record
from privacy.secagg.messages import RECORD_KEY as SECAGG_RECORD
from privacy.strategy_wrapper import StrategyWrapper
from privacy.updates import array_view, layout_of

UPDATE_REJECTED = 4001
"""Error code of a reply the coordinator rejected (outside Flower's own ``ErrorCode`` range)."""
REJECTED_PREFIX = "update rejected by the coordinator: "
MODES = ("none", "secagg+", "ckks")
CLIP_KEY = CLIP_NORM


@dataclass(frozen=True)
class Rejection:
    """One rejected reply: whose, which round, why (no content)."""

    server_round: int
    node_id: int
    site: str
    reason: str


@dataclass(frozen=True)
class UpdateValidator:
    """The checks for one protection mode (see the module docstring)."""

    mode: str
    clip_norm: float
    max_weight: float
    weight_key: str = "num-examples"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigurationError(f"update validation: unknown mode '{self.mode}'; choose one of {MODES}")
        if not (self.clip_norm > 0 and self.max_weight > 0):
            raise ConfigurationError("update validation needs a positive clipping bound and max weight")

    def check(self, reply: Message, global_arrays: ArrayRecord) -> str | None:
        """Why ``reply`` must not be aggregated, or None when it is well formed."""
        if self.mode == "secagg+":
            return _check_masked(reply, global_arrays)
        if self.mode == "ckks":
            return _check_encrypted(reply, global_arrays)
        return self._check_clear(reply, global_arrays)

    def _check_clear(self, reply: Message, global_arrays: ArrayRecord) -> str | None:
        record = reply.content.array_records.get("arrays")
        if record is None or len(reply.content.array_records) != 1:
            return "a clear update must hold exactly one ArrayRecord named 'arrays'"
        if list(record.keys()) != list(global_arrays.keys()):
            return "its arrays do not have the global model's names"
        squared = 0.0
        for key in global_arrays.keys():
            local, base = record[key], global_arrays[key]
            if tuple(local.shape) != tuple(base.shape) or local.dtype != base.dtype:
                return (f"array '{key}' is {local.dtype}{list(local.shape)}, the global model's is "
                        f"{base.dtype}{list(base.shape)}")
            values = array_view(local)  # Flower's .numpy() parses the same .npy header for every site
            if not np.all(np.isfinite(values)):
                return f"array '{key}' holds NaN or infinite values"
            squared += float(np.sum((values.astype(np.float64) - array_view(base).astype(np.float64)) ** 2))
        if math.sqrt(squared) > self.clip_norm * (1 + 1e-6):
            return f"the update's L2 norm is above the clipping bound {self.clip_norm:g}"
        return self._check_weight(reply)

    def _check_weight(self, reply: Message) -> str | None:
        metrics: MetricRecord | None = metric_record(reply.content, "metrics")
        weight = metrics.get(self.weight_key) if metrics is not None else None
        if not isinstance(weight, (int, float)) or not 0 < float(weight) <= self.max_weight:
            return f"its weight '{self.weight_key}' is missing or outside (0, max-weight={self.max_weight:g}]"
        return None


def _check_masked(reply: Message, global_arrays: ArrayRecord) -> str | None:
    records = reply.content.array_records
    if config_record(reply.content, SECAGG_RECORD) is None:
        return "a SecAgg+ reply without its 'secagg' record"
    if len(records) != 1 or len(next(iter(records.values()))) != 1:
        return "a SecAgg+ reply must hold exactly one masked vector"
    (masked,) = next(iter(records.values())).values()
    expected = (layout_of(global_arrays).size + 1,)
    if masked.dtype != "uint32" or tuple(masked.shape) != expected:
        return f"the masked vector is {masked.dtype}{list(masked.shape)}, expected uint32{list(expected)}"
    return None


def _check_encrypted(reply: Message, global_arrays: ArrayRecord) -> str | None:
    content = reply.content
    if "arrays" in content.array_records:
        return "a CKKS reply carrying clear weights"
    meta: ConfigRecord | None = config_record(content, HE_RECORD)
    chunks = content.array_records.get(CIPHERTEXT_RECORD)
    if meta is None or chunks is None or len(chunks) == 0:
        return "a CKKS reply without its 'he' record or ciphertext"
    if str(meta.get("length")) != str(layout_of(global_arrays).size + 2):
        return "the ciphertext was made for another model size"
    for key in chunks.keys():
        array = chunks[key]
        if array.dtype != "uint8" or len(array.shape) != 1 or array.shape[0] == 0:
            return f"ciphertext chunk '{key}' is {array.dtype}{list(array.shape)}, not a non-empty uint8 vector"
    return None


def _site_name(reply: Message, enrolled: Callable[[int], str | None] | None = None) -> str:
    """Who sent ``reply``: its node's enrolled identity when known (``coordinator.identity``), else its claim."""
    node = int(reply.metadata.src_node_id)
    name = enrolled(node) if enrolled is not None else None
    if name is not None:
        return name
    try:
        site = SiteReply.of(reply)
    except ProtocolError:
        site = None
    return site.name if site is not None else f"node-{node}"


class UpdateValidationStrategy(StrategyWrapper):
    """Replaces malformed training replies by rejection errors before ``inner`` sees them."""

    def __init__(self, inner: Strategy, validator: UpdateValidator, *,
                 on_reject: Callable[[Rejection], None] | None = None) -> None:
        super().__init__(inner)
        self.validator = validator
        self.on_reject = on_reject
        self.rejections: list[Rejection] = []
        self._global: ArrayRecord | None = None

    def __getattr__(self, name: str) -> Any:  # the tracker's ``sites``, ``rounds_aggregated``, …
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        if self.validator.mode == "none":  # sites clip clear updates to the bound checked here
            config = ConfigRecord({**dict(config), CLIP_KEY: self.validator.clip_norm})
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        screened = [self._screen(server_round, reply) for reply in replies]
        return self.inner.aggregate_train(server_round, screened)

    def _screen(self, server_round: int, reply: Message) -> Message:
        if reply.has_error() or self._global is None:
            return reply
        try:
            reason = self.validator.check(reply, self._global)
        except Exception as exc:  # noqa: BLE001 - a reply malformed in a way no check foresaw
            reason = f"malformed reply ({type(exc).__name__})"
        if reason is None:
            return reply
        rejection = Rejection(server_round, int(reply.metadata.src_node_id),
                              _site_name(reply, getattr(self.inner, "enrolled_name", None)), reason)
        self.rejections.append(rejection)
        logger.warning("round %d: rejected the update of %s (node %d): %s", server_round, rejection.site,
                       rejection.node_id, reason)
        if self.on_reject is not None:
            self.on_reject(rejection)
        # The reply's own metadata (its src node id, which later layers read), now carrying an error:
        # Flower's typed constructors only build new messages or replies, whose metadata would differ.
        return make_message(reply.metadata, error=Error(code=UPDATE_REJECTED, reason=REJECTED_PREFIX + reason))


def audit_rejections(registry: Registry, run_id: str) -> Callable[[Rejection], None]:
    """An ``on_reject`` that appends an ``update.rejected`` event to the registry's audit trail."""

    def on_reject(rejection: Rejection) -> None:
        with registry.transaction() as session:
            audit.record(session, "update.rejected", actor="coordinator", subject=rejection.site, details={
                "run": run_id, "round": rejection.server_round, "node": str(rejection.node_id),
                "reason": rejection.reason,
            })

    return on_reject
