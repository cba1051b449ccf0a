"""Building Flower Messages and Contexts for mod tests, without a running federation."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict


def arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def train_message(records: dict[str, Any], *, run_id: int = 7, server_round: int = 1,
                  message_type: str = "train") -> Message:
    content = RecordDict(records)
    if "config" not in content:
        content["config"] = ConfigRecord({"server-round": server_round})
    md = Metadata(run_id=run_id, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=1,
                  reply_to_message_id="", group_id=str(server_round), created_at=time.time(), ttl=600.0,
                  message_type=message_type)
    return Message(content=content, metadata=md)


def context(node_config: dict[str, Any] | None = None) -> Context:
    return Context(run_id=7, node_id=1, node_config=node_config or {}, state=RecordDict(), run_config={})
