"""The site's side of a secure sum: answer each stage, release the payload only masked or encrypted.

:func:`answer` is called by the site's handler for the exchange's message
type. It reads the ``"secure-sum"`` record, checks that the sum it is asked
to join will hold at least the promised ``min_contributors`` (SecAgg+: its
threshold ``t`` must not be smaller; CKKS: it decrypts only a sum whose
contribution counter reaches it), and calls ``payload(bounds)`` exactly at
the stage that sends the vector out: SecAgg+'s masked input, CKKS' encrypt.
Nothing else of the site's leaves through this path.

Its protocol state lives in ``context.state[state_key]`` (separate from the
training rounds' SecAgg+ and CKKS state).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from privacy.he.backend import HEBackend, create_backend
from privacy.he.codec import ciphertext_record, read_ciphertext, sum_record
from privacy.he.errors import DecryptionRefused, HEKeyError
from privacy.he.instruction import CIPHERTEXT_RECORD, SUM_RECORD
from privacy.he.mod import DEFAULT_SITE_MIN_SITES, MIN_SITES_KEY, SECRET_CONTEXT_KEY
from privacy.records import config_record
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import RECORD_KEY, MaskedInputRequest, _Message, decode
from privacy.secure_sum.wire import MASKED_KEY, RECORD, Bounds, SecureSumError, masked_record

Payload = Callable[[Bounds], np.ndarray]
"""Returns the site's integer vector of ``bounds.length``; called once, when it is about to leave."""


def answer(msg: Message, context: Context, payload: Payload, *, state_key: str) -> Message:
    """The reply to one stage of a secure sum (see the module docstring).

    Raises
    ------
    SecureSumError
        No or a malformed ``"secure-sum"`` record, or bounds the protocol does not keep.
    """
    record = config_record(msg.content, RECORD)
    if record is None:
        raise SecureSumError(f"the message carries no '{RECORD}' record; coordinator and site differ")
    bounds = Bounds.from_record(record)
    if bounds.mechanism == "secagg+":
        content = _secagg(msg, context, bounds, payload, state_key)
    else:
        content = _ckks(msg, context, record, bounds, payload, state_key)
    return Message(content=content, reply_to=msg)


def _secagg(msg: Message, context: Context, bounds: Bounds, payload: Payload, state_key: str) -> RecordDict:
    stage = config_record(msg.content, RECORD_KEY)
    if stage is None:
        raise SecureSumError("a SecAgg+ secure-sum message carries no 'secagg' record")
    request = decode(stage)
    client = SecAggClient(context.node_id, config_record(context.state, state_key))
    answer: _Message
    content = RecordDict()
    if isinstance(request, MaskedInputRequest):
        client.check(request)
        cfg = client.config
        if bounds.min_contributors > cfg.threshold or bounds.max_contributors < cfg.num_sites:
            raise SecureSumError(
                f"the coordinator promised sums of {bounds.min_contributors}…{bounds.max_contributors} sites, but "
                f"SecAgg+ releases sums of {cfg.threshold}…{cfg.num_sites}; this site sends nothing"
            )
        vector = _checked(payload(bounds), bounds)
        masked = client.masked_input(request, vector.astype(np.float64))
        answer = masked
        content[MASKED_KEY] = masked_record(masked.masked)
    else:
        answer = client.handle(request)
    content[RECORD_KEY] = answer.to_record()
    context.state[state_key] = client.to_record()
    return content


def _ckks(msg: Message, context: Context, record: ConfigRecord, bounds: Bounds, payload: Payload,
          state_key: str) -> RecordDict:
    backend = _backend(msg, context, str(record.get("backend", "ckks")))
    if str(record.get("key-id")) != backend.key_id:
        raise HEKeyError(f"the coordinator uses federation key {record.get('key-id')!s} but this site holds "
                         f"{backend.key_id}")
    state = dict(config_record(context.state, state_key) or {})
    if bounds.stage == "encrypt":
        if state.get("encrypted"):
            raise DecryptionRefused("this site already contributed to this secure sum; refused")
        vector = _checked(payload(bounds), bounds)
        ciphertext = backend.encrypt(np.concatenate([vector.astype(np.float64), [1.0]]))
        context.state[state_key] = ConfigRecord({"encrypted": True, "min": bounds.min_contributors})
        return RecordDict({CIPHERTEXT_RECORD: ciphertext_record(backend, ciphertext)})
    if bounds.stage != "decrypt":
        raise SecureSumError(f"unknown CKKS secure-sum stage '{bounds.stage}'")
    if not state.get("encrypted") or state.get("decrypted"):
        raise DecryptionRefused("refusing to decrypt: this site did not contribute to this sum, or decrypted it")
    required = max(_int(state["min"]), _int(context.node_config.get(MIN_SITES_KEY, DEFAULT_SITE_MIN_SITES)))
    contributors = _int(record.get("contributors", 0))
    if contributors < required:
        raise DecryptionRefused(f"refusing to decrypt a sum of {contributors} site(s); this site requires {required}")
    ciphertext = read_ciphertext(backend, msg.content.array_records[CIPHERTEXT_RECORD], bounds.length + 1)
    context.state[state_key] = ConfigRecord({**state, "decrypted": True})
    total = backend.decrypt(ciphertext)
    if abs(float(total[-1]) - contributors) > 0.01:
        raise DecryptionRefused("refusing to release a decryption: the contribution counter does not match")
    return RecordDict({SUM_RECORD: sum_record(total[:-1])})


def _int(value: object) -> int:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return int(value)
    raise SecureSumError(f"expected a number in the secure-sum record, got {value!r}")


def _checked(vector: np.ndarray, bounds: Bounds) -> np.ndarray:
    values = np.asarray(vector)
    if values.shape != (bounds.length,) or not np.issubdtype(values.dtype, np.integer):
        raise SecureSumError(f"the payload must be {bounds.length} integers, got {values.dtype}{list(values.shape)}")
    return values


def _backend(msg: Message, context: Context, name: str) -> HEBackend:
    """The site's secret context: node config ``he-secret-context``, else the run's (simulation)."""
    path: object = context.node_config.get(SECRET_CONTEXT_KEY)
    if not path:
        config = config_record(msg.content, "config")
        path = config.get(SECRET_CONTEXT_KEY) if config is not None else None
    if not path:
        raise HEKeyError(f"no secret context for the CKKS secure sum: set node config '{SECRET_CONTEXT_KEY}'")
    return create_backend(name, Path(str(path)).expanduser(), role="site")
