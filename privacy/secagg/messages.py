"""The protocol's stage messages, and their encoding as a Flower ``ConfigRecord``.

Every message carries a header (stage, direction, round id, server round,
node id) so a receiver can refuse one that is out of order, for another
round, replayed, or addressed to someone else. The header travels packed in
one bytes field (``>BB16sqQ``: stage index, direction, round id, server
round, node id), and the setup parameters as one JSON string: a record has a
handful of fields, since Flower type-checks and serializes every field of a
``ConfigRecord`` one by one. Node ids travel packed as big-endian uint64
bytes (Flower node ids use the full 64 bits, which ConfigRecord integers do
not); maps from node id to bytes travel as a packed id list plus the values packed
into one bytes field (each prefixed by its uint32 length).
The masked vector itself travels in an ``ArrayRecord`` beside the record.

Keys drawn ahead: a share-keys request may ask the site for its *next*
session's public keys (:class:`AheadKeys`, named by a random id the site
draws); the share-keys request that opens that session then carries the
setup parameters and that id, and the setup stage is not run for the site.
That request may ride on the current session's unmask request, as a second
record (``NEXT_RECORD_KEY``), so a round can start at its masked-input stage.

Notes
-----
The four stages are those of Bonawitz et al. (2017), §4 (AdvertiseKeys,
ShareKeys, MaskedInputCollection, Unmasking), restricted to neighbours as in
Bell et al. (2020).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord

from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggProtocolError

SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK = "setup", "share-keys", "masked-input", "unmask"
STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)
RECORD_KEY = "secagg"
NEXT_RECORD_KEY = "secagg-next"
"""An unmask request's second record: the share-keys request opening the node's next session."""
DIRECTIONS = ("request", "reply")
_HEADER = struct.Struct(">BB16sqQ")


def pack_ids(ids: Any) -> bytes:
    """Node ids as big-endian unsigned 64-bit words, the wire form of a node-id list."""
    ids = list(ids)
    return struct.pack(f">{len(ids)}Q", *ids)


def unpack_ids(data: bytes) -> tuple[int, ...]:
    """Inverse of :func:`pack_ids`, refusing a length that is not whole words."""
    if len(data) % 8:
        raise SecAggProtocolError("a packed node-id list has a length that is not a multiple of 8")
    return struct.unpack(f">{len(data) // 8}Q", data)


_LENGTH = struct.Struct(">I")


def pack_values(values: Any) -> bytes:
    """Byte strings as one: each prefixed by its big-endian uint32 length.

    Flower type-checks and serializes every element of a list field on its own (construction,
    protobuf encoding and decoding); one bytes field costs one check whatever it holds.
    """
    return b"".join(_LENGTH.pack(len(value)) + value for value in values)


def unpack_values(data: Any) -> list[bytes]:
    """Inverse of :func:`pack_values`; refuses anything else than a well-formed packed list."""
    if not isinstance(data, bytes):
        raise SecAggProtocolError(f"a packed value list must be bytes, got {type(data).__name__}")
    values, offset, end = [], 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise SecAggProtocolError("a packed value list ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise SecAggProtocolError("a packed value list is shorter than one of its lengths")
        values.append(data[offset:offset + length])
        offset += length
    return values


def _pack_map(prefix: str, mapping: Mapping[int, bytes]) -> dict[str, Any]:
    nodes = sorted(mapping)
    return {f"{prefix}-nodes": pack_ids(nodes), prefix: pack_values(mapping[n] for n in nodes)}


def _unpack_map(record: Mapping[str, Any], prefix: str) -> dict[int, bytes]:
    nodes, values = unpack_ids(record[f"{prefix}-nodes"]), unpack_values(record[prefix])
    if len(nodes) != len(values) or len(set(nodes)) != len(nodes):
        raise SecAggProtocolError(f"the '{prefix}' map of a secagg message is malformed")
    return dict(zip(nodes, values, strict=True))


@dataclass(frozen=True)
class Header:
    """Where a message belongs: stage, round (random id and server round number), node."""

    stage: str
    round_id: bytes
    server_round: int
    node_id: int

    def describe(self) -> str:
        return (f"stage '{self.stage}' of round {self.server_round} (id {self.round_id.hex()[:12]}) "
                f"for node {self.node_id}")


@dataclass(frozen=True)
class _Message:
    header: Header
    stage: ClassVar[str]
    direction: ClassVar[str]

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_record(self) -> ConfigRecord:
        h = self.header
        values: dict[str, Any] = {"header": _HEADER.pack(STAGES.index(h.stage), DIRECTIONS.index(self.direction),
                                                          h.round_id, h.server_round, h.node_id)}
        values.update(self._body())
        return ConfigRecord(values)


@dataclass(frozen=True)
class SetupRequest(_Message):
    """Stage 0, server → site: the sampled nodes (for the graph) and the parameters."""

    nodes: tuple[int, ...]
    config: SecAggConfig
    stage: ClassVar[str] = SETUP
    direction: ClassVar[str] = "request"

    def _body(self) -> dict[str, Any]:
        return {"nodes": pack_ids(self.nodes), "config": json.dumps(self.config.to_record_dict(), sort_keys=True)}


@dataclass(frozen=True)
class SetupReply(_Message):
    """Stage 0, site → server: two fresh X25519 public keys and a commitment to the self-mask seed."""

    channel_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    stage: ClassVar[str] = SETUP
    direction: ClassVar[str] = "reply"

    def _body(self) -> dict[str, Any]:
        return {"channel-key": self.channel_key, "mask-key": self.mask_key, "seed-commitment": self.seed_commitment}


@dataclass(frozen=True)
class AheadKeys:
    """A site's public keys for its next session, drawn at the share-keys stage of its current one.

    What a :class:`SetupReply` holds (two X25519 public keys, a commitment to
    the self-mask seed), named by ``key_id``: 16 random bytes the site drew
    with them. The commitment binds ``key_id`` in place of the round id, which
    does not exist yet when the keys are drawn.
    """

    key_id: bytes
    channel_key: bytes
    mask_key: bytes
    seed_commitment: bytes

    def well_formed(self) -> bool:
        """16-byte id, 32-byte keys and commitment (what the server accepts)."""
        return (len(self.key_id) == 16 and len(self.channel_key) == 32 and len(self.mask_key) == 32
                and len(self.seed_commitment) == 32)

    def pack(self) -> bytes:
        """The wire form: the four fields, concatenated."""
        return self.key_id + self.channel_key + self.mask_key + self.seed_commitment

    @classmethod
    def unpack(cls, packed: Any) -> AheadKeys:
        """Inverse of :meth:`pack`; refuses anything but 16 + 32 + 32 + 32 bytes."""
        if not isinstance(packed, bytes) or len(packed) != 112:
            raise SecAggProtocolError("a share-keys reply's keys drawn ahead must be 112 bytes")
        return cls(packed[:16], packed[16:48], packed[48:80], packed[80:])


@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Stage 1, server → site: the public keys of its live neighbours.

    To a site whose keys were drawn ahead (no setup stage this session) it also
    carries the setup's node list and parameters and the ``key_id`` of those keys.
    ``keys_ahead`` asks the site to draw its next session's keys and send their public half.
    """

    channel_keys: dict[int, bytes] = field(default_factory=dict)
    mask_keys: dict[int, bytes] = field(default_factory=dict)
    nodes: tuple[int, ...] = ()
    config: SecAggConfig | None = None
    key_id: bytes = b""
    keys_ahead: bool = False
    stage: ClassVar[str] = SHARE_KEYS
    direction: ClassVar[str] = "request"

    def _body(self) -> dict[str, Any]:
        body = {**_pack_map("channel-keys", self.channel_keys), **_pack_map("mask-keys", self.mask_keys),
                "keys-ahead": self.keys_ahead}
        if self.key_id:
            assert self.config is not None, "a share-keys request opening a session names its parameters"
            body.update({"key-id": self.key_id, "nodes": pack_ids(self.nodes),
                         "config": json.dumps(self.config.to_record_dict(), sort_keys=True)})
        return body


@dataclass(frozen=True)
class ShareKeysReply(_Message):
    """Stage 1, site → server: one encrypted pair of Shamir shares per live neighbour.

    ``ahead``: the site's public keys for its next session, when the request asked for them.
    """

    ciphertexts: dict[int, bytes] = field(default_factory=dict)
    ahead: AheadKeys | None = None
    stage: ClassVar[str] = SHARE_KEYS
    direction: ClassVar[str] = "reply"

    def _body(self) -> dict[str, Any]:
        body = _pack_map("ciphertexts", self.ciphertexts)
        if self.ahead is not None:
            body["ahead"] = self.ahead.pack()
        return body


@dataclass(frozen=True)
class MaskedInputRequest(_Message):
    """Stage 2, server → site: the share ciphertexts addressed to it, by sender."""

    ciphertexts: dict[int, bytes] = field(default_factory=dict)
    stage: ClassVar[str] = MASKED_INPUT
    direction: ClassVar[str] = "request"

    def _body(self) -> dict[str, Any]:
        return _pack_map("ciphertexts", self.ciphertexts)


@dataclass(frozen=True)
class MaskedInputReply(_Message):
    """Stage 2, site → server: the masked uint32 vector (sent in an ArrayRecord beside the header)."""

    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    stage: ClassVar[str] = MASKED_INPUT
    direction: ClassVar[str] = "reply"

    def _body(self) -> dict[str, Any]:
        return {"length": int(self.masked.size)}


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Stage 3, server → site: who sent a masked input (survivors) and who dropped after sharing."""

    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    stage: ClassVar[str] = UNMASK
    direction: ClassVar[str] = "request"

    def _body(self) -> dict[str, Any]:
        return {"survivors": pack_ids(self.survivors), "dropped": pack_ids(self.dropped)}


@dataclass(frozen=True)
class UnmaskReply(_Message):
    """Stage 3, site → server: self-mask seed shares of survivors, mask-key shares of the dropped."""

    seed_shares: dict[int, bytes] = field(default_factory=dict)
    key_shares: dict[int, bytes] = field(default_factory=dict)
    stage: ClassVar[str] = UNMASK
    direction: ClassVar[str] = "reply"

    def _body(self) -> dict[str, Any]:
        return {**_pack_map("seed-shares", self.seed_shares), **_pack_map("key-shares", self.key_shares)}


def _parse_header(record: Mapping[str, Any]) -> tuple[Header, str]:
    try:
        packed = record["header"]
        stage, direction, round_id, server_round, node_id = _HEADER.unpack(packed)
    except (KeyError, TypeError, struct.error) as error:
        raise SecAggProtocolError(f"not a secagg message: its header is missing or malformed ({error})") from None
    if stage >= len(STAGES):
        raise SecAggProtocolError(f"unknown secagg stage index {stage} (expected one of {STAGES})")
    if direction >= len(DIRECTIONS):
        raise SecAggProtocolError(f"secagg message direction must be 'request' or 'reply', got index {direction}")
    return Header(STAGES[stage], round_id, server_round, node_id), DIRECTIONS[direction]


def header_of(record: Mapping[str, Any]) -> Header:
    """The header of an encoded message; refuses a record that is not one."""
    return _parse_header(record)[0]


_CONFIGS: dict[str, SecAggConfig] = {}


def config_from_json(text: Any) -> SecAggConfig:
    """The validated :class:`SecAggConfig` a setup request's ``config`` JSON names.

    A federation sends the same parameters to every site in every round, and a site reads
    them back from its state at every stage: each distinct text is parsed and validated
    once per process and the (frozen) result reused.
    """
    config = _CONFIGS.get(text) if isinstance(text, str) else None
    if config is not None:
        return config
    try:
        values = json.loads(text)
    except (TypeError, ValueError) as error:
        raise SecAggProtocolError(f"a secagg setup request's parameters are not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise SecAggProtocolError("a secagg setup request's parameters must be a JSON object")
    config = SecAggConfig.from_record_dict(values)
    if len(_CONFIGS) >= 64:  # bounded: a long-lived site meets only a few federations' parameters
        _CONFIGS.clear()
    _CONFIGS[text] = config
    return config


def _config_of(record: Mapping[str, Any]) -> SecAggConfig:
    return config_from_json(record["config"])


def _key_id(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 16:
        raise SecAggProtocolError("a share-keys request's key id must be 16 bytes")
    return value


def decode(record: Mapping[str, Any], masked: np.ndarray | None = None) -> _Message:
    """Rebuild the message a record encodes (``masked``: the vector of a masked-input reply)."""
    h, direction = _parse_header(record)
    try:
        if direction == "request":
            if h.stage == SETUP:
                return SetupRequest(h, unpack_ids(record["nodes"]), _config_of(record))
            if h.stage == SHARE_KEYS:
                opening: dict[str, Any] = {}
                if "key-id" in record:
                    opening = {"nodes": unpack_ids(record["nodes"]), "config": _config_of(record),
                               "key_id": _key_id(record["key-id"])}
                return ShareKeysRequest(h, _unpack_map(record, "channel-keys"), _unpack_map(record, "mask-keys"),
                                        keys_ahead=bool(record.get("keys-ahead", False)), **opening)
            if h.stage == MASKED_INPUT:
                return MaskedInputRequest(h, _unpack_map(record, "ciphertexts"))
            return UnmaskRequest(h, unpack_ids(record["survivors"]), unpack_ids(record["dropped"]))
        if direction == "reply":
            if h.stage == SETUP:
                return SetupReply(h, record["channel-key"], record["mask-key"], record["seed-commitment"])
            if h.stage == SHARE_KEYS:
                ahead = record.get("ahead")
                return ShareKeysReply(h, _unpack_map(record, "ciphertexts"),
                                      None if ahead is None else AheadKeys.unpack(ahead))
            if h.stage == MASKED_INPUT:
                if masked is None or masked.size != int(record["length"]):
                    raise SecAggProtocolError("a masked-input reply's vector is missing or of the wrong length")
                return MaskedInputReply(h, masked)
            return UnmaskReply(h, _unpack_map(record, "seed-shares"), _unpack_map(record, "key-shares"))
    except KeyError as missing:
        raise SecAggProtocolError(f"secagg {h.describe()} lacks the field {missing}") from None
    raise SecAggProtocolError(f"secagg message direction must be 'request' or 'reply', got {direction!r}")
