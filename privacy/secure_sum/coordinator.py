"""The coordinator's side of a secure sum: run the stages through the grid, keep only the sum.

:func:`secure_sum` sends every stage to the sites as messages of the
caller's type (e.g. ``"query.reference"``), each with the ``"secure-sum"``
record and the caller's own records. Under SecAgg+ the masked vectors go
straight into :class:`SecAggServer`'s single accumulator (it never keeps
one); under CKKS the ciphertexts are added and only the sum is sent to one
contributing site for decryption. Error replies, malformed replies and
silence count as dropouts; a sum of fewer than ``min_contributors``
contributions is never returned (:class:`SecureSumError`).

Notes
-----
Bonawitz et al. (2017) and Bell et al. (2020) for SecAgg+; Aono et al.
(2017) for additively homomorphic aggregation under a key the sites share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.he.backend import Ciphertext, create_backend
from privacy.he.codec import ciphertext_record, read_ciphertext, read_sum
from privacy.he.errors import HEKeyError, HEPayloadError
from privacy.he.instruction import CIPHERTEXT_RECORD, SUM_RECORD
from privacy.records import config_record
from privacy.secagg.errors import SecAggAbortedError, SecAggProtocolError
from privacy.secagg.messages import MASKED_INPUT, RECORD_KEY, SETUP, SHARE_KEYS, UNMASK, _Message, decode
from privacy.secagg.server import SecAggServer
from privacy.secure_sum.wire import MASKED_KEY, RECORD, Bounds, SecureSumError, integer_config
from privacy.updates import array_view

logger = logging.getLogger("fedguard.privacy")

Extra = Mapping[str, ConfigRecord | ArrayRecord]


@dataclass(frozen=True)
class SumResult:
    """The released sum and the node ids whose contributions it holds."""

    total: np.ndarray
    contributors: tuple[int, ...]
    bounds: Bounds


def bounds_for(mechanism: str, num_nodes: int, length: int) -> Bounds:
    """The contributor bounds a secure sum among ``num_nodes`` sites promises (before it starts).

    Raises
    ------
    SecureSumError
        Too few sites for the mechanism (SecAgg+ needs 3, CKKS 2).
    """
    if mechanism == "secagg+":
        if num_nodes < 3:
            raise SecureSumError(f"a SecAgg+ secure sum needs at least 3 sites, {num_nodes} take part")
        return Bounds(mechanism, SETUP, length, integer_config(num_nodes).threshold, num_nodes)
    if num_nodes < 2:
        raise SecureSumError(f"a CKKS secure sum needs at least 2 sites, {num_nodes} take part")
    return Bounds(mechanism, "encrypt", length, num_nodes, num_nodes)


def secure_sum(
    grid: Grid, nodes: Sequence[int], length: int, *, mechanism: str, message_type: str, extra: Extra,
    timeout: float, he_public_context: Path | None = None,
) -> SumResult:
    """Sum one integer vector of ``length`` from each of ``nodes``; only the sum reaches this process.

    Raises
    ------
    SecureSumError
        Too few sites, too many dropouts, or no site decrypted the CKKS sum.
    """
    bounds = bounds_for(mechanism, len(nodes), length)
    if mechanism == "secagg+":
        return _secagg(grid, list(nodes), bounds, message_type, extra, timeout)
    if he_public_context is None:
        raise SecureSumError("a CKKS secure sum needs the coordinator's public context (he-public-context)")
    return _ckks(grid, list(nodes), bounds, message_type, extra, timeout, he_public_context)


def _messages(requests: Mapping[int, ConfigRecord | RecordDict], bounds: Bounds, message_type: str,
              extra: Extra) -> list[Message]:
    out = []
    for node, payload in requests.items():
        content = RecordDict({RECORD: bounds.to_record(), **extra})
        if isinstance(payload, RecordDict):
            for key, record in payload.items():
                content[key] = record
        else:
            content[RECORD_KEY] = payload
        out.append(Message(content, dst_node_id=node, message_type=message_type, group_id="0"))
    return out


# ------------------------------------------------------------------ SecAgg+
def _secagg(grid: Grid, nodes: list[int], bounds: Bounds, message_type: str, extra: Extra,
            timeout: float) -> SumResult:
    server = SecAggServer(integer_config(len(nodes)), nodes, 0, length=bounds.length)
    try:
        for stage, requests in ((SETUP, server.setup_requests), (SHARE_KEYS, server.share_keys_requests),
                                (MASKED_INPUT, server.masked_input_requests)):
            _exchange(grid, server, stage, requests(), bounds.at(stage), message_type, extra, timeout)
        total = _exchange(grid, server, UNMASK, server.unmask_requests(), bounds.at(UNMASK), message_type, extra,
                          timeout)
    except SecAggAbortedError as exc:
        raise SecureSumError(f"the secure sum was aborted: {exc}") from exc
    logger.info("secure sum (SecAgg+): %d of %d sites summed, %d dropped, %d rejected", len(server.survivors),
                len(nodes), len(server.dropped), len(server.rejections))
    return SumResult(np.rint(total).astype(np.int64), server.survivors, bounds)


def _exchange(grid: Grid, server: SecAggServer, stage: str, requests: Mapping[int, _Message], bounds: Bounds,
              message_type: str, extra: Extra, timeout: float) -> Any:
    sent = _messages({n: r.to_record() for n, r in requests.items()}, bounds, message_type, extra)
    parsed: dict[int, _Message] = {}
    for reply in grid.send_and_receive(sent, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            logger.warning("secure sum: node %d dropped at stage '%s': %s", node, stage, reply.error.reason)
            server.reject(node, f"stage '{stage}': error reply: {reply.error.reason}")
            continue
        try:
            if node in parsed:
                raise SecAggProtocolError("duplicate reply")
            parsed[node] = _decode(reply, stage)
        except SecAggProtocolError as exc:
            logger.warning("secure sum: reply from node %d rejected at stage '%s': %s", node, stage, exc)
            server.reject(node, f"stage '{stage}': {exc}")
    return server.run_stage(stage, parsed)


def _decode(reply: Message, stage: str) -> _Message:
    record = config_record(reply.content, RECORD_KEY)
    if record is None:
        raise SecAggProtocolError("the reply carries no 'secagg' record")
    masked = None
    if stage == MASKED_INPUT:
        arrays = reply.content.array_records.get(MASKED_KEY)
        if arrays is None or list(arrays.keys()) != [MASKED_KEY]:
            raise SecAggProtocolError("a masked-input reply must hold one array named 'masked'")
        masked = array_view(arrays[MASKED_KEY])
    elif reply.content.array_records:
        raise SecAggProtocolError(f"a '{stage}' reply must not carry arrays")
    message = decode(record, masked)
    if message.header.stage != stage:
        raise SecAggProtocolError(f"expected a '{stage}' reply, got one for stage '{message.header.stage}'")
    return message


# --------------------------------------------------------------------- CKKS
def _ckks(grid: Grid, nodes: list[int], bounds: Bounds, message_type: str, extra: Extra, timeout: float,
          public_context: Path) -> SumResult:
    backend = create_backend("ckks", public_context, role="coordinator")
    key = {"key-id": backend.key_id, "backend": backend.name}
    sent = _messages({n: RecordDict() for n in nodes}, bounds, message_type,
                     {**extra, RECORD: bounds.to_record(**key)})
    valid: list[int] = []
    ciphertexts: list[Ciphertext] = []
    for reply in grid.send_and_receive(sent, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        try:
            if reply.has_error():
                raise HEPayloadError(reply.error.reason)
            if node in valid or CIPHERTEXT_RECORD not in reply.content.array_records:
                raise HEPayloadError("a duplicate reply, or no ciphertext")
            ciphertexts.append(read_ciphertext(backend, reply.content.array_records[CIPHERTEXT_RECORD],
                                               bounds.length + 1))
            valid.append(node)
        except (HEPayloadError, HEKeyError) as exc:
            logger.warning("secure sum (CKKS): node %d left out: %s", node, exc)
    if len(valid) < bounds.min_contributors:
        raise SecureSumError(f"the secure sum (CKKS) got {len(valid)} valid contribution(s), fewer than the "
                             f"{bounds.min_contributors} it promised; nothing was decrypted")
    total = backend.add(ciphertexts)
    decrypt = bounds.at("decrypt").to_record(**key, contributors=len(valid))
    for node in valid:  # the first contributor that decrypts; the others are asked only if it fails
        content = {**extra, RECORD: decrypt, CIPHERTEXT_RECORD: ciphertext_record(backend, total)}
        replies = list(grid.send_and_receive(_messages({node: RecordDict()}, bounds, message_type, content),
                                             timeout=timeout))
        try:
            if len(replies) != 1 or replies[0].has_error() or SUM_RECORD not in replies[0].content.array_records:
                raise HEPayloadError(replies[0].error.reason if len(replies) == 1 and replies[0].has_error()
                                     else "no sum")
            reply = replies[0]
            vector = read_sum(reply.content.array_records[SUM_RECORD])
            if vector.shape != (bounds.length,):
                raise HEPayloadError(f"the decrypted sum has {vector.size} values, expected {bounds.length}")
        except HEPayloadError as exc:
            logger.warning("secure sum (CKKS): node %d did not decrypt: %s", node, exc)
            continue
        logger.info("secure sum (CKKS): %d of %d sites summed", len(valid), len(nodes))
        return SumResult(np.rint(vector).astype(np.int64), tuple(sorted(valid)), bounds)
    raise SecureSumError("no contributing site decrypted the CKKS sum; nothing was released")
