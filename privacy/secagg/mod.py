"""The site side over Flower: a client mod that turns a train reply into a masked payload.

Install it as the **outermost** train mod (first in the list)::

    app = ClientApp(mods=[secaggplus_mod])              # or
    @app.train(mods=[secaggplus_mod, <any other mods>])

Train messages carry a ``"secagg"`` ConfigRecord naming the stage. The
setup and share-keys stages are answered by the mod alone; the masked-input
stage lets the app train (``call_next``), then computes ``Δ = local − global``,
clips it to ``clip_norm`` (enforced here, whatever the app did), weights it
(``num-examples``, or 1 under uniform weighting; more than ``max_weight`` is
refused), quantizes, masks, and replies with only the masked uint32 vector,
the app's MetricRecords and its ``"site"`` ConfigRecord (public metadata).
The unmask stage is answered by the mod alone. A train message *without* a
``"secagg"`` record is refused: a protected site never sends an unmasked update.
Evaluate and query messages pass through untouched.

The per-round protocol state (fresh secret keys, self-mask seed, shares held
for neighbours) lives in ``context.state["secagg"]`` on the site only.

Notes
-----
A mod wrapping the app, as Flower's own ``secaggplus_mod`` (legacy API) and
its DP mods do (fedguard convention: privacy wraps, never forks). Protocol:
Bonawitz et al. (2017); Bell et al. (2020). Clipping before quantization:
McMahan et al. (2018).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from privacy import logger, updates
from privacy.records import config_record, metric_items
from privacy.secagg.client import SecAggClient
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbortedError, SecAggConfigError, SecAggProtocolError, SecAggRequiredError
from privacy.secagg.messages import (
    NEXT_RECORD_KEY,
    RECORD_KEY,
    MaskedInputRequest,
    ShareKeysRequest,
    UnmaskRequest,
    _Message,
    decode,
)

STATE_KEY = "secagg"
MASKED_KEY = "masked"


def _only_array_record(content: RecordDict, what: str) -> ArrayRecord:
    records = [record for record in content.values() if isinstance(record, ArrayRecord)]
    if len(records) != 1:
        raise SecAggProtocolError(f"{what} must hold exactly one ArrayRecord, found {len(records)}")
    return records[0]


def _weight(reply: Message, cfg: SecAggConfig) -> float:
    if cfg.weighting == "uniform":
        return 1.0
    for _, metrics in metric_items(reply.content):
        if cfg.weight_key in metrics:
            weight = float(metrics[cfg.weight_key])  # type: ignore[arg-type]
            if not 0 < weight <= cfg.max_weight:
                raise SecAggConfigError(
                    f"this site's weight {cfg.weight_key}={weight:g} is outside (0, max_weight={cfg.max_weight:g}]; "
                    "the update was not sent (raise max_weight on the coordinator, or use uniform weighting)"
                )
            return weight
    raise SecAggConfigError(f"the train reply has no '{cfg.weight_key}' metric to weight the update by")


def protected_payload(instruction: Message, reply: Message, cfg: SecAggConfig) -> np.ndarray:
    """``[w·clip(local − global, C), w]`` from the app's train reply (``privacy.updates``)."""
    global_arrays = _only_array_record(instruction.content, "the train instruction")
    local_arrays = _only_array_record(reply.content, "the ClientApp's train reply")
    payload, _ = updates.clipped_payload(local_arrays, global_arrays, cfg.clip_norm, _weight(reply, cfg))
    return payload


def _unmask_and_open(client: SecAggClient, request: UnmaskRequest, opening: ConfigRecord,
                     content: RecordDict) -> _Message:
    """Unmask the current session, then answer the next one's share-keys request (into ``content``).

    A next session this site cannot open (say, it restarted and holds no keys) costs only that
    session: this one's unmask is answered all the same.
    """
    answer = client.unmask(request)
    try:
        next_session = decode(opening)
        if not isinstance(next_session, ShareKeysRequest):
            raise SecAggProtocolError("the record riding on an unmask request is not a share-keys request")
        content[NEXT_RECORD_KEY] = client.share_keys(next_session, in_advance=True).to_record()
    except (SecAggProtocolError, SecAggAbortedError, SecAggConfigError) as error:
        logger.warning("secagg: this site does not take part in its next session: %s", error)
    return answer


def secaggplus_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run fedguard's SecAgg+ for train messages (see the module docstring)."""
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    record = config_record(msg.content, RECORD_KEY)
    if record is None:
        raise SecAggRequiredError(
            "this site runs the SecAgg+ mod and never sends an unmasked update, but the train message carries "
            "no 'secagg' record; run the coordinator with SecAggPlusStrategy (or remove the mod)"
        )
    request = decode(record)
    client = SecAggClient(context.node_id, config_record(context.state, STATE_KEY))
    if isinstance(request, MaskedInputRequest):
        client.check(request)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        masked = client.masked_input(request, protected_payload(msg, reply, client.config), consume=True)
        answer: _Message = masked
        content = RecordDict({"arrays": ArrayRecord({MASKED_KEY: updates.array_of(masked.masked)})})
        for key, metrics in metric_items(reply.content):
            content[key] = metrics
        site = config_record(reply.content, "site")
        if site is not None:
            content["site"] = site
    else:
        content = RecordDict()
        opening = config_record(msg.content, NEXT_RECORD_KEY)
        if isinstance(request, UnmaskRequest) and opening is not None:
            answer = _unmask_and_open(client, request, opening, content)
        else:
            answer = client.handle(request)
    content[RECORD_KEY] = answer.to_record()
    context.state[STATE_KEY] = client.to_record()
    return Message(content=content, reply_to=msg)
