"""The site's half of SecAgg+: a state machine with one handler per stage.

A :class:`SecAggClient` answers the four stage requests of a round in order.
Its state (fresh key pairs, self-mask seed, neighbours' keys, the shares it
holds for them) is kept in a ``ConfigRecord`` (:meth:`to_record`) so the
Flower mod can store it in the node's ``context.state`` between messages.
It refuses, with the reason, any request that is out of order, for another
round, replayed, addressed to another node, or whose ciphertexts fail
authentication; and it never reveals both secrets of one neighbour.

Keys drawn ahead: asked at a share-keys stage, the site also draws its next
session's key pairs and self-mask seed there and keeps them in its state
(through the rest of the session) until a share-keys request names their id;
that request opens the session with them (no setup stage), and they serve
that one session. A setup stage (fresh keys) drops keys still pending.

Notes
-----
Bonawitz et al. (2017), "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", §4 (client side of AdvertiseKeys, ShareKeys,
MaskedInputCollection, Unmasking, and its checks |U| ≥ t); Bell et al.
(2020), "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead":
shares and pairwise masks only with the k graph neighbours.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from privacy.secagg import keys, shamir
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbortedError, SecAggProtocolError
from privacy.secagg.graph import neighbours_of
from privacy.secagg.messages import (
    MASKED_INPUT,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    AheadKeys,
    Header,
    MaskedInputReply,
    MaskedInputRequest,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    _Message,
    config_from_json,
    pack_ids,
    pack_values,
    unpack_ids,
    unpack_values,
)
from privacy.secagg.prg import MaskExpander
from privacy.secagg.quantization import quantize

_PREVIOUS = {SHARE_KEYS: SETUP, MASKED_INPUT: SHARE_KEYS, UNMASK: MASKED_INPUT}
DONE = "done"
_AHEAD = ("ahead-id", "ahead-channel-sk", "ahead-mask-sk", "ahead-seed")


def seed_commitment(binding: bytes, node_id: int, seed: bytes) -> bytes:
    """``SHA-256(protocol ‖ binding ‖ node ‖ seed)``: lets the server check a rebuilt self-mask seed.

    ``binding`` is the round id for keys drawn at setup, and the keys' own random id for keys
    drawn ahead (their round id does not exist yet): 16 fresh bytes either way.
    """
    return hashlib.sha256(keys.PROTOCOL + b"/seed/" + binding + struct.pack(">Q", node_id) + seed).digest()


def _pending_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The keys drawn ahead that ``state`` holds (carried from one stage's state to the next)."""
    return {key: state[key] for key in _AHEAD if key in state}


def share_point(nodes: tuple[int, ...], node: int) -> int:
    """The public Shamir point of ``node``: its 1-based rank among the round's sampled nodes."""
    rank = _ranks(tuple(nodes)).get(node)
    if rank is None:
        raise ValueError(f"node {node} is not among the round's sampled nodes")
    return rank


@lru_cache(maxsize=8)
def _ranks(nodes: tuple[int, ...]) -> dict[int, int]:
    """Every node's 1-based rank (sorted once per round and process; a site asks for each neighbour's)."""
    return {node: rank for rank, node in enumerate(sorted(nodes), start=1)}


class SecAggClient:
    """One site's SecAgg+ protocol state for the current round.

    Parameters
    ----------
    node_id : int
        This site's Flower node id (requests addressed to another id are refused).
    state : ConfigRecord or None
        What :meth:`to_record` saved after the previous message, if any.
    randbelow : Callable[[int], int] or None
        Randomness for Shamir coefficients (tests only; default ``secrets.randbelow``).
    """

    def __init__(
        self, node_id: int, state: ConfigRecord | None = None, *, randbelow: Callable[[int], int] | None = None
    ) -> None:
        self.node_id = node_id
        self._state: dict[str, Any] = dict(state) if state is not None else {}
        self._randbelow = randbelow
        self._config: SecAggConfig | None = None

    # ------------------------------------------------------------------ state
    def to_record(self) -> ConfigRecord:
        """The state to keep until the next message (holds secrets: site-local only)."""
        return ConfigRecord(dict(self._state))

    @property
    def stage(self) -> str | None:
        """The last stage this site completed in its current round (``"done"`` after unmask)."""
        return self._state.get("stage")

    @property
    def config(self) -> SecAggConfig:
        """The round's parameters (validated once per message, then reused)."""
        if self._config is None:
            if "config" not in self._state:
                raise SecAggProtocolError("this site has no SecAgg+ round in progress (no parameters in its state)")
            self._config = config_from_json(self._state["config"])
        return self._config

    def check(self, request: _Message) -> None:
        """Refuse ``request`` unless it is the next stage of this site's current round."""
        h: Header = request.header
        if h.node_id != self.node_id:
            raise SecAggProtocolError(f"secagg {h.describe()} is addressed to another node (this is {self.node_id})")
        if request.direction != "request":
            raise SecAggProtocolError(f"secagg {h.describe()}: a site only answers requests")
        if h.stage == SETUP or (isinstance(request, ShareKeysRequest) and request.key_id):
            if h.round_id == self._state.get("round-id"):
                raise SecAggProtocolError(f"secagg {h.describe()} was already answered: replayed message refused")
            if h.server_round < self._floor():
                raise SecAggProtocolError(
                    f"secagg {h.describe()} is older than this site's latest round "
                    f"{self._floor()}: replayed message refused"
                )
            if isinstance(request, ShareKeysRequest) and request.key_id != self._state.get("ahead-id"):
                held = self._state.get("ahead-id")
                raise SecAggProtocolError(
                    f"secagg {h.describe()} opens a session with the keys drawn ahead under id "
                    f"{request.key_id.hex()[:12]}, but this site holds "
                    + (f"those of id {held.hex()[:12]}" if isinstance(held, bytes) else "none")
                    + " (a site restarted since its last round holds none, and keys serve one session); refused"
                )
            return
        if h.round_id != self._state.get("round-id") or h.server_round != self._state.get("server-round"):
            raise SecAggProtocolError(
                f"secagg {h.describe()} belongs to no round this site set up (current: round "
                f"{self._state.get('server-round')}); refused"
            )
        if self.stage != _PREVIOUS[h.stage]:
            raise SecAggProtocolError(
                f"secagg {h.describe()} is out of order: this site's last completed stage is {self.stage!r}, "
                f"expected {_PREVIOUS[h.stage]!r}; replayed or misordered message refused"
            )

    # ----------------------------------------------------------------- stages
    def setup(self, request: SetupRequest) -> SetupReply:
        """Stage 0: draw two X25519 key pairs and a self-mask seed; compute the neighbours."""
        self.check(request)
        h = request.header
        channel, mask, seed = keys.KeyPair.generate(), keys.KeyPair.generate(), os.urandom(32)
        self._begin(h, request.config, request.nodes, channel.private, mask.private, seed, in_advance=False)
        return SetupReply(Header(SETUP, h.round_id, h.server_round, self.node_id), channel.public, mask.public,
                          seed_commitment(h.round_id, self.node_id, seed))

    def _floor(self) -> int:
        """The oldest server round this site still opens a session for (replays of older ones are refused)."""
        return int(self._state.get("floor", self._state.get("server-round", -1)))

    def _begin(self, h: Header, config: SecAggConfig, nodes: tuple[int, ...], channel_sk: bytes, mask_sk: bytes,
               seed: bytes, *, in_advance: bool) -> None:
        """Start a session with these secrets: check the node list and parameters, compute the neighbours.

        A session opened ``in_advance`` (during the previous session's unmask) leaves the floor of
        acceptable rounds where it was until this site sends a masked input in it: the coordinator
        may still need a session for the current round (a retry) instead.
        """
        cfg = config.validate()
        if self.node_id not in nodes:
            raise SecAggProtocolError(f"secagg {h.describe()}: this node is not among the round's sampled nodes")
        cfg.check_round(len(nodes))
        neighbours = neighbours_of(nodes, cfg.num_neighbours, h.round_id, self.node_id)
        self._config = cfg
        # The state keeps only what later stages need, each secret until its last use
        # (fewer fields also make the per-message ConfigRecord cheaper).
        self._state = {
            "stage": SETUP, "round-id": h.round_id, "server-round": h.server_round,
            "floor": self._floor() if in_advance else max(self._floor(), h.server_round),
            "config": json.dumps(cfg.to_record_dict(), sort_keys=True), "nodes": pack_ids(nodes),
            "neighbours": pack_ids(neighbours), "channel-sk": channel_sk, "mask-sk": mask_sk, "seed": seed,
        }

    def share_keys(self, request: ShareKeysRequest, *, in_advance: bool = False) -> ShareKeysReply:
        """Stage 1: Shamir-share the seed and the mask key among live neighbours, encrypted to each.

        A request naming keys drawn ahead (``key_id``) first opens the session with them, as
        :meth:`setup` would have with fresh ones; those keys then leave the state (one session each).
        A request with ``keys_ahead`` gets fresh keys for the site's next session in the reply.
        ``in_advance``: the request rode on the previous session's unmask request (see :meth:`_begin`).
        """
        self.check(request)
        if request.key_id:
            assert request.config is not None  # decode() reads both with the key id
            held = self._state
            self._begin(request.header, request.config, request.nodes, held["ahead-channel-sk"],
                        held["ahead-mask-sk"], held["ahead-seed"], in_advance=in_advance)
        h, cfg, s = request.header, self.config, self._state
        live = sorted(request.channel_keys)
        if set(request.mask_keys) != set(live) or not set(live) <= set(unpack_ids(s["neighbours"])):
            raise SecAggProtocolError(
                f"secagg {h.describe()}: the keys offered are not those of this site's neighbours")
        if len(live) < cfg.threshold:
            raise SecAggAbortedError(
                f"secagg {h.describe()}: only {len(live)} neighbours advertised keys, fewer than the threshold "
                f"t={cfg.threshold}; this site withdraws from the round"
            )
        advertised = [request.channel_keys[j] for j in live] + [request.mask_keys[j] for j in live]
        if len(set(advertised)) != len(advertised):
            raise SecAggProtocolError(f"secagg {h.describe()}: two neighbours advertised the same public key")
        nodes = unpack_ids(s["nodes"])
        points = [share_point(nodes, j) for j in live]
        rand = {"randbelow": self._randbelow} if self._randbelow is not None else {}
        seed_shares = shamir.split(s["seed"], points, cfg.threshold, **rand)
        key_shares = shamir.split(s["mask-sk"], points, cfg.threshold, **rand)
        channel = keys.channel_keys(s["channel-sk"], {j: request.channel_keys[j] for j in live}, h.round_id,
                                    self.node_id)
        ciphertexts = {}
        for j, seed_share, key_share in zip(live, seed_shares, key_shares, strict=True):
            plaintext = struct.pack(">QQ", self.node_id, j) + seed_share.to_bytes() + key_share.to_bytes()
            aad = keys.associated_data(h.round_id, SHARE_KEYS, self.node_id, j)
            ciphertexts[j] = keys.seal(channel[j], plaintext, aad)
        # The derived channel keys are kept (site-local, like channel-sk) so the next stage opens
        # its neighbours' shares without agreeing them a second time.
        self._state = {key: s[key] for key in ("round-id", "server-round", "floor", "config", "mask-sk", "seed")
                       if key in s}
        self._state.update(_pending_keys(s))
        self._state.update({"stage": SHARE_KEYS, "live": pack_ids(live),
                            "peer-channel-key": pack_values(channel[j] for j in live),
                            "peer-mask": pack_values(request.mask_keys[j] for j in live)})
        ahead = self._draw_ahead() if request.keys_ahead else None
        return ShareKeysReply(Header(SHARE_KEYS, h.round_id, h.server_round, self.node_id), ciphertexts, ahead)

    def masked_input(
        self, request: MaskedInputRequest, payload: np.ndarray, *, consume: bool = False
    ) -> MaskedInputReply:
        """Stage 2: keep the neighbours' shares, then send ``quantize(payload) + masks`` mod 2^32.

        ``payload`` is ``[w·Δ, w]`` (``privacy.updates.weighted_payload``), within the configured bound.
        With ``consume=True`` a float64 ``payload`` is scaled in place (the mod's own buffer) instead of copied.
        """
        self.check(request)
        h, cfg, s = request.header, self.config, self._state
        live = unpack_ids(s["live"])
        peer_channel = dict(zip(live, unpack_values(s["peer-channel-key"]), strict=True))
        peer_mask = dict(zip(live, unpack_values(s["peer-mask"]), strict=True))
        senders = sorted(request.ciphertexts)
        if not set(senders) <= set(live):
            raise SecAggProtocolError(
                f"secagg {h.describe()}: shares forwarded from nodes that are not live neighbours")
        if len(senders) < cfg.threshold:
            raise SecAggAbortedError(
                f"secagg {h.describe()}: only {len(senders)} neighbours shared keys, fewer than the threshold "
                f"t={cfg.threshold}; this site withdraws from the round"
            )
        held_seed, held_key = [], []
        for j in senders:
            aad = keys.associated_data(h.round_id, SHARE_KEYS, j, self.node_id)
            plaintext = keys.open_sealed(peer_channel[j], request.ciphertexts[j], aad,
                                         f"the shares node {j} sent to node {self.node_id}")
            if plaintext[:16] != struct.pack(">QQ", j, self.node_id):
                raise SecAggProtocolError(
                    f"secagg {h.describe()}: shares from node {j} name another sender or recipient")
            held_seed.append(plaintext[16:16 + 74])
            held_key.append(plaintext[16 + 74:])
        encoded = quantize(payload, cfg.effective_scale, cfg.bound, overwrite=consume)
        seeds = keys.mask_seeds(s["mask-sk"], {j: peer_mask[j] for j in senders}, h.round_id, self.node_id)
        expander = MaskExpander.for_length(encoded.size)
        expander.add(encoded, s["seed"])
        for j in senders:
            (expander.add if self.node_id < j else expander.subtract)(encoded, seeds[j])
        self._state = {"stage": MASKED_INPUT, "round-id": s["round-id"], "server-round": s["server-round"],
                       "floor": max(self._floor(), h.server_round),
                       "config": s["config"], "senders": pack_ids(senders), "held-seed": pack_values(held_seed),
                       "held-key": pack_values(held_key), **_pending_keys(s)}
        return MaskedInputReply(Header(MASKED_INPUT, h.round_id, h.server_round, self.node_id), encoded)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Stage 3: reveal seed shares of survivors and mask-key shares of the dropped; forget the round."""
        self.check(request)
        h, cfg, s = request.header, self.config, self._state
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise SecAggProtocolError(
                f"secagg {h.describe()}: nodes {sorted(survivors & dropped)} listed both as survivors and as dropped; "
                "revealing both of their secrets would unmask them — refused"
            )
        if self.node_id not in survivors:
            raise SecAggProtocolError(
                f"secagg {h.describe()}: this site sent its masked input but is listed as dropped")
        if len(survivors) < cfg.threshold:
            raise SecAggAbortedError(
                f"secagg {h.describe()}: only {len(survivors)} sites sent masked inputs, fewer than the threshold "
                f"t={cfg.threshold}; this site refuses to help unmask so small a sum"
            )
        seed_shares, key_shares = {}, {}
        for j, seed_share, key_share in zip(unpack_ids(s["senders"]), unpack_values(s["held-seed"]),
                                             unpack_values(s["held-key"]), strict=True):
            if j in survivors:
                seed_shares[j] = seed_share
            elif j in dropped:
                key_shares[j] = key_share
            else:
                raise SecAggProtocolError(f"secagg {h.describe()}: neighbour {j} is neither a survivor nor dropped")
        self._state = {"stage": DONE, "round-id": h.round_id, "server-round": h.server_round,
                       "floor": self._floor(), **_pending_keys(s)}
        self._config = None
        return UnmaskReply(Header(UNMASK, h.round_id, h.server_round, self.node_id), seed_shares, key_shares)

    def _draw_ahead(self) -> AheadKeys:
        """Fresh keys and seed for this site's next session, kept (site-local) until it opens.

        They replace any keys still pending, and survive every stage of the current session.
        """
        channel, mask, seed, key_id = keys.KeyPair.generate(), keys.KeyPair.generate(), os.urandom(32), os.urandom(16)
        self._state.update({"ahead-id": key_id, "ahead-channel-sk": channel.private, "ahead-mask-sk": mask.private,
                            "ahead-seed": seed})
        return AheadKeys(key_id, channel.public, mask.public, seed_commitment(key_id, self.node_id, seed))

    def handle(self, request: _Message, payload: np.ndarray | None = None) -> _Message:
        """Dispatch ``request`` to its stage handler (``payload`` only for the masked-input stage)."""
        if isinstance(request, SetupRequest):
            return self.setup(request)
        if isinstance(request, ShareKeysRequest):
            return self.share_keys(request)
        if isinstance(request, MaskedInputRequest):
            if payload is None:
                raise SecAggProtocolError("the masked-input stage needs this site's payload")
            return self.masked_input(request, payload)
        if isinstance(request, UnmaskRequest):
            return self.unmask(request)
        raise SecAggProtocolError(f"a site cannot answer a {type(request).__name__}")
