"""Test-only: a site that skips its clipping and scales its update before masking it (issue 12, point 3).

:func:`make_cheating_mod` returns a client mod for ``client.app.make_client_app(mods=[...])``.
Those mods sit *outside* the protection mod, so the cheater takes the
SecAgg+ masked-input stage away from it: it strips the ``"secagg"`` record,
lets the app train (the site must allow clear updates internally:
``require_protection=False``; nothing clear leaves the site), builds its
payload ``[factor·w·Δ, w]`` with no clipping, and masks it with the site's
own SecAgg+ state, exactly as a modified site agent would. Every other
message (other stages, other sites, other rounds) goes through unchanged.

The payload is kept inside the fixed-point range ``±B`` the masks were sized
for (a cheater that overflows it only sends noise, which the bounds catch as
well); that is the largest effect a cheater can have through the encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from privacy import updates
from privacy.records import config_record
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import RECORD_KEY, MaskedInputRequest, decode
from privacy.secagg.mod import MASKED_KEY, STATE_KEY

Mod = Callable[[Message, Context, ClientAppCallable], Message]


def make_cheating_mod(factor: float, *, site: int = 0, rounds: Collection[int] | None = None,
                      times: int | None = None) -> Mod:
    """Site ``site`` (its ``partition-id``) sends ``factor`` × its unclipped update in ``rounds`` (None: all).

    ``times`` limits how many masked inputs it falsifies (per process: one Ray actor, or in-process tests).
    """
    done = [0]

    def cheating_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(RECORD_KEY)
        if (msg.metadata.message_type != MessageType.TRAIN or record is None
                or int(context.node_config["partition-id"]) != site):
            return call_next(msg, context)
        request = decode(record)
        if not isinstance(request, MaskedInputRequest) or (rounds is not None and
                                                            request.header.server_round not in rounds):
            return call_next(msg, context)
        if times is not None and done[0] >= times:
            return call_next(msg, context)
        done[0] += 1
        client = SecAggClient(context.node_id, config_record(context.state, STATE_KEY))
        client.check(request)
        del msg.content[RECORD_KEY]  # the protection mod below now lets the clear reply through
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        config = client.config
        metrics = reply.content.metric_records["metrics"]
        weight = 1.0 if config.weighting == "uniform" else float(metrics[config.weight_key])  # type: ignore[arg-type]
        delta = updates.model_delta(reply.content.array_records["arrays"], msg.content.array_records["arrays"])
        payload = np.clip(updates.weighted_payload(factor * delta, weight), -config.bound, config.bound)
        masked = client.masked_input(request, payload)
        content = RecordDict({"arrays": ArrayRecord({MASKED_KEY: Array(masked.masked)})})
        for key in ("metrics", "site"):
            if key in reply.content:
                content[key] = reply.content[key]
        content[RECORD_KEY] = masked.to_record()
        context.state[STATE_KEY] = client.to_record()
        return Message(content=content, reply_to=msg)

    return cheating_mod
