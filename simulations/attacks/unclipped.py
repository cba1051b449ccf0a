"""What "skips clipping" means: the site ignores the coordinator's bound but still masks or encrypts.

An honest site clips its update to the bound ``C`` the coordinator declares,
inside its protection mod, before masking or encryption. A modified agent can
drop that step and nothing else:

* **clear updates** (no secure aggregation): the train config's ``clip-norm``
  instruction is removed before the protection mod reads it. The coordinator
  checks every clear update against ``C`` (``coordinator.strategies.validation``)
  and rejects this one.
* **CKKS**: the ``he`` instruction's ``clip-norm`` is raised to :data:`UNBOUNDED`
  before the CKKS mod reads it; the update is encrypted unclipped.
* **SecAgg+**: the clipping bound is part of the round's SecAgg+ parameters
  (it sizes the fixed-point encoding), so the attacker keeps the parameters,
  lets the site train in the clear *inside* the agent, and masks the unclipped
  payload ``[w·Δ, w]`` itself with the site's own SecAgg+ state, exactly as the
  honest mod would but without the clip. Its payload stays within the
  encoding's range ``±B`` (beyond it the sum wraps into noise, which the bounds
  catch as well); that is the largest effect the encoding allows.

In the two secure modes the coordinator sees only the sum: its aggregate
bounds (``coordinator.strategies.aggregate_bounds``) and held-out accuracy
check (``aggregate_guard``) are what catch the attacker.

Notes
-----
Why per-site bounds cannot be checked under secure aggregation, and what
would close the gap (zero-knowledge input validation): Bell, Gascón, Lepoint,
Li, Mironov, Raykova & Turan (2023), "ACORN: Input Validation for Secure
Aggregation" (USENIX Security).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from client.protection import REQUIRE_KEY
from federation.protocol import CLIP_NORM, CONFIG_RECORD
from privacy import updates
from privacy.he.instruction import HE_RECORD
from privacy.records import config_record, metric_items, required_config
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import RECORD_KEY, MaskedInputRequest, decode
from privacy.secagg.mod import MASKED_KEY, STATE_KEY

UNBOUNDED = 1e30
"""The clipping bound an attacker declares to itself under CKKS: no clipping at all."""


def _drop_clear_bound(msg: Message) -> None:
    config = config_record(msg.content, CONFIG_RECORD)
    if config is not None and CLIP_NORM in config:
        del config[CLIP_NORM]


def _clear_inside(context: Context) -> Context:
    """``context`` as seen by the site's own protection mod once the attacker lets clear updates through."""
    return Context(context.run_id, context.node_id, {**context.node_config, REQUIRE_KEY: False}, context.state,
                   context.run_config)


def _masked_unclipped(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The SecAgg+ masked-input stage with the clip left out (module docstring)."""
    request = decode(required_config(msg.content, RECORD_KEY))
    client = SecAggClient(context.node_id, config_record(context.state, STATE_KEY))
    client.check(request)
    assert isinstance(request, MaskedInputRequest)
    del msg.content[RECORD_KEY]  # the protection mod below now takes the clear path, inside this site
    reply = call_next(msg, _clear_inside(context))
    if reply.has_error():
        return reply
    config = client.config
    metrics = reply.content.metric_records["metrics"]
    weight = 1.0 if config.weighting == "uniform" else float(metrics[config.weight_key])  # type: ignore[arg-type]
    delta = updates.model_delta(reply.content.array_records["arrays"], msg.content.array_records["arrays"])
    payload = np.clip(updates.weighted_payload(delta, weight), -config.bound, config.bound)
    masked = client.masked_input(request, payload)
    content = RecordDict({"arrays": ArrayRecord({MASKED_KEY: Array(masked.masked)})})
    for key, metrics in metric_items(reply.content):
        content[key] = metrics
    site = config_record(reply.content, "site")
    if site is not None:
        content["site"] = site
    content[RECORD_KEY] = masked.to_record()
    context.state[STATE_KEY] = client.to_record()
    return Message(content=content, reply_to=msg)


def skip_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run a train message through the site without its clip, protected as the coordinator asked."""
    _drop_clear_bound(msg)
    he = config_record(msg.content, HE_RECORD)
    if he is not None and CLIP_NORM in he:
        he[CLIP_NORM] = UNBOUNDED
    secagg = config_record(msg.content, RECORD_KEY)
    if secagg is not None and isinstance(decode(secagg), MaskedInputRequest):
        return _masked_unclipped(msg, context, call_next)
    return call_next(msg, context)
