"""The site side of the CKKS mode: a Flower client mod that encrypts and decrypts.

Install it on the train handler (``@app.train(mods=[ckks_mod])``); it wraps
the app and works on the two stages named by the message's ``"he"`` record:

``encrypt``
    Let the app train (``call_next``), then turn its new weights into the
    payload ``[w·clip(Δ, C), w, 1]`` (the trailing 1 counts contributions),
    encrypt it under the federation key, and reply with the ciphertext, the
    app's ``metrics`` and its public ``site`` record, never the weights.
``decrypt``
    Decrypt a *summed* ciphertext the coordinator sends back and reply with the
    plaintext sum ``[Σ w·Δ, Σ w]``, after checking it is an aggregate: the
    request and the decrypted counter must both show at least
    ``max(min-sites, he-min-sites)`` contributions, the site must have
    contributed to that round, and it decrypts each round at most once.

A train message without ``"he"`` is refused: a site set up for encrypted
aggregation never sends a clear update. Other message types pass through.

The secret context comes from ``context.node_config["he-secret-context"]``
(deployment: set by the SuperNode operator) or else from the train config's
``"he-secret-context"`` (simulation). ``node_config["he-min-sites"]``
(default 2) is the site's own floor, which the coordinator cannot lower.

Notes
-----
The counter slot only stops an honest-but-curious coordinator: one holding
the public key can forge it (it can encrypt any vector and add it). See
docs/homomorphic.md, "Threat model". Design after Aono et al. 2017,
"Privacy-Preserving Deep Learning via Additively Homomorphic Encryption".
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from privacy import logger
from privacy.he.backend import HEBackend, create_backend
from privacy.he.codec import ciphertext_record, read_ciphertext, sum_record
from privacy.he.errors import DecryptionRefused, HEKeyError, HEPayloadError
from privacy.he.instruction import CIPHERTEXT_RECORD, HE_RECORD, SUM_RECORD, HEInstruction
from privacy.records import config_record, metric_record
from privacy.updates import clip, model_delta, weighted_payload

SECRET_CONTEXT_KEY = "he-secret-context"
MIN_SITES_KEY = "he-min-sites"
DEFAULT_SITE_MIN_SITES = 2
_STATE_KEY = "fedguard-he"


def ckks_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Encrypt this site's update, or decrypt an aggregate; see the module docstring.

    Raises
    ------
    HEPayloadError
        A train message without a valid ``"he"`` record, or a malformed ciphertext.
    HEKeyError
        No usable secret context, or a request under another federation key.
    DecryptionRefused
        The decrypt request does not show an aggregate of enough sites, or repeats.
    """
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    record = config_record(msg.content, HE_RECORD)
    if record is None:
        raise HEPayloadError("this site sends only encrypted updates but the train message has no 'he' "
                             "record; run the coordinator with secure aggregation 'ckks'")
    instruction = HEInstruction.from_record(record)
    backend = _site_backend(msg, context, instruction.backend)
    if instruction.key_id != backend.key_id:
        raise HEKeyError(f"the coordinator uses federation key {instruction.key_id} but this site holds "
                         f"{backend.key_id}; both must come from the same create_federation_keys call")
    if instruction.stage == "encrypt":
        return _encrypt(msg, context, call_next, instruction, backend)
    return _decrypt(msg, context, instruction, backend)


def _encrypt(msg: Message, context: Context, call_next: ClientAppCallable,
             instruction: HEInstruction, backend: HEBackend) -> Message:
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    metrics = metric_record(reply.content, "metrics")
    if metrics is None or "num-examples" not in metrics:
        raise HEPayloadError("the app's train reply has no 'metrics' record with 'num-examples'")
    delta = model_delta(reply.content.array_records["arrays"], msg.content.array_records["arrays"])
    clipped, _ = clip(delta, instruction.clip_norm)
    payload = weighted_payload(clipped, instruction.weight(float(metrics["num-examples"])))  # type: ignore[arg-type]
    ciphertext = backend.encrypt(np.concatenate([payload, [1.0]]))
    _remember(context, "encrypted-round", instruction.server_round)
    content = RecordDict({
        CIPHERTEXT_RECORD: ciphertext_record(backend, ciphertext),
        HE_RECORD: ConfigRecord({"key-id": backend.key_id, "length": ciphertext.length, "backend": backend.name}),
        "metrics": metrics,
    })
    site = config_record(reply.content, "site")
    if site is not None:
        content["site"] = site
    return Message(content=content, reply_to=msg)


def _decrypt(msg: Message, context: Context, instruction: HEInstruction, backend: HEBackend) -> Message:
    required = max(instruction.min_sites, int(context.node_config.get(MIN_SITES_KEY, DEFAULT_SITE_MIN_SITES)))
    state = _state(context)
    if instruction.contributors < required:
        raise DecryptionRefused(f"refusing to decrypt an aggregate of {instruction.contributors} site(s); "
                                f"this site requires at least {required}")
    if state.get("encrypted-round") != instruction.server_round:
        raise DecryptionRefused(f"refusing to decrypt for round {instruction.server_round}: "
                                "this site did not contribute to it")
    if state.get("decrypted-round") == instruction.server_round:
        raise DecryptionRefused(f"refusing a second decryption for round {instruction.server_round}")
    ciphertext = read_ciphertext(backend, msg.content.array_records[CIPHERTEXT_RECORD], instruction.length)
    _remember(context, "decrypted-round", instruction.server_round)
    total = backend.decrypt(ciphertext)
    counted = float(total[-1])
    if abs(counted - instruction.contributors) > 0.01:
        logger.warning("round %d: decrypt request claims %d contributions, the ciphertext counts %.3f",
                       instruction.server_round, instruction.contributors, counted)
        raise DecryptionRefused("refusing to release a decryption: the ciphertext's contribution counter "
                                "does not match the request")
    content = RecordDict({SUM_RECORD: sum_record(total[:-1]),
                          HE_RECORD: ConfigRecord({"contributors": round(counted)})})
    return Message(content=content, reply_to=msg)


def _site_backend(msg: Message, context: Context, name: str) -> HEBackend:
    path: object = context.node_config.get(SECRET_CONTEXT_KEY)
    if not path:
        config = config_record(msg.content, "config")
        path = config.get(SECRET_CONTEXT_KEY) if config is not None else None
    if not path:
        raise HEKeyError("no secret context for the CKKS mode: set node config "
                         f"'{SECRET_CONTEXT_KEY}' to the he-secret-context.bin from the enrolment bundle")
    resolved = Path(str(path)).expanduser().resolve()
    try:
        stamp = resolved.stat().st_mtime_ns
    except OSError as exc:
        raise HEKeyError(f"cannot read the site secret context '{resolved}' ({exc.strerror or exc})") from exc
    return _load_backend(name, resolved, stamp)


@functools.lru_cache(maxsize=4)
def _load_backend(name: str, path: Path, stamp: int) -> HEBackend:
    """Loading parses ~0.4 MB; cached per (path, mtime) for the life of the process."""
    del stamp  # part of the cache key only
    return create_backend(name, path, role="site")


def _state(context: Context) -> dict[str, object]:
    record = config_record(context.state, _STATE_KEY)
    return dict(record) if record is not None else {}


def _remember(context: Context, key: str, server_round: int) -> None:
    state = _state(context)
    state[key] = server_round
    context.state[_STATE_KEY] = ConfigRecord(state)  # type: ignore[arg-type]
