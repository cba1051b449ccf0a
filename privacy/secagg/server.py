"""The coordinator's half of SecAgg+: stages, survivor bookkeeping, reconstruction, unmasking.

A :class:`SecAggServer` runs one round for a fixed list of sampled nodes. It
routes public keys and encrypted shares between neighbours, adds masked
vectors into one uint32 accumulator as they arrive (it never keeps one
site's vector), rebuilds the self-mask seeds of the survivors and the mask
keys of the sites that dropped after sharing, and removes their masks.
Only the sum of the survivors' payloads ever exists in the clear.

Replies that are malformed, for another round or stage, from an unexpected
node, or duplicated are rejected (reason kept in :attr:`rejections`) and
their sender counts as dropped. When fewer than ``t`` sites survive a stage,
or some site's secret cannot be rebuilt from ``t`` neighbours' shares, the
round raises :class:`SecAggAbortedError` with the numbers, and nothing
partial is returned.

Notes
-----
Bonawitz et al. (2017) §4 (server side, with the abort rule |U_i| < t) and
Bell et al. (2020) (neighbour graph: per-node recoverability needs ``t``
surviving *neighbours*). Seed commitments (SHA-256 of the seed) and the
check ``X25519(sk) = pk`` detect inconsistent shares before unmasking.

Keys drawn ahead (``keys_ahead``, ``ahead``) move a node's AdvertiseKeys
message into its previous session's share-keys reply, so a session whose nodes
all drew ahead runs three stages, not four (two when its share-keys stage rides
on the previous session's unmask: :mod:`privacy.secagg.strategy`). Each key
pair still serves exactly one session (the site drops it when the session
opens), the round id, and with it the graph, is still fresh per session, and
keys do not influence the graph: seeing them before choosing the round id gives
the coordinator nothing it could not get by trying round ids anyway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privacy.secagg import keys, shamir
from privacy.secagg.client import seed_commitment, share_point
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbortedError, SecAggAuthenticationError, SecAggProtocolError
from privacy.secagg.graph import neighbour_graph
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
)
from privacy.secagg.prg import MaskExpander
from privacy.secagg.quantization import dequantize


class SecAggServer:
    """One SecAgg+ round at the coordinator.

    Parameters
    ----------
    config : SecAggConfig
        The federation's parameters (validated; the round's node count is checked against them).
    nodes : Sequence[int]
        The node ids sampled for this round.
    server_round : int
        The round number (bound into every message and key).
    round_id : bytes or None
        16 random bytes naming this round (default: fresh from ``os.urandom``); also seeds the graph.
    length : int or None
        Expected length of the payload vectors (model size + 1), when known.
    ahead : Mapping[int, AheadKeys] or None
        Public keys some nodes drew ahead for this session (at their last share-keys stage): those
        nodes skip the setup stage, and their share-keys request opens the session.
    keys_ahead : bool
        Ask the share-keys stage's nodes for their next session's keys (then in :attr:`next_keys`).
    """

    def __init__(
        self, config: SecAggConfig, nodes: Sequence[int], server_round: int, *,
        round_id: bytes | None = None, length: int | None = None,
        ahead: Mapping[int, AheadKeys] | None = None, keys_ahead: bool = False,
    ) -> None:
        self.config = config.validate()
        self.nodes = tuple(int(n) for n in nodes)
        config.check_round(len(self.nodes))
        config.check_headroom(len(self.nodes))
        self.server_round = server_round
        self.round_id = round_id if round_id is not None else os.urandom(16)
        self.length = length
        self.graph = neighbour_graph(self.nodes, config.num_neighbours, self.round_id)
        self.points = {n: share_point(self.nodes, n) for n in self.nodes}
        self.stage = "start"
        self.rejections: dict[int, str] = {}
        self.ahead = {n: k for n, k in (ahead or {}).items() if n in self.points and k.well_formed()}
        self.keys_ahead = keys_ahead
        self.next_keys: dict[int, AheadKeys] = {}
        self.advertised: dict[int, SetupReply | AheadKeys] = {}  # U1
        self.shared: dict[int, dict[int, bytes]] = {}          # U2: sender -> {recipient: ciphertext}
        self.survivors: tuple[int, ...] = ()                   # U3
        self.dropped: tuple[int, ...] = ()                     # U2 \ U3
        self.unmaskers: tuple[int, ...] = ()                   # U4
        self._sum: np.ndarray | None = None

    # ---------------------------------------------------------------- helpers
    def _header(self, stage: str, node: int) -> Header:
        return Header(stage, self.round_id, self.server_round, node)

    def _advance(self, expected: str, stage: str) -> None:
        if self.stage != expected:
            raise SecAggProtocolError(
                f"secagg server: stage '{stage}' called after '{self.stage}' (expected after '{expected}')"
            )
        self.stage = stage

    def _accept(self, replies: Mapping[int, _Message], stage: str, expected: set[int], kind: type) -> dict[int, Any]:
        """Replies that are well-formed answers for this round and stage from expected nodes."""
        accepted: dict[int, Any] = {}
        for sender, reply in replies.items():
            h = reply.header
            reason = None
            if not isinstance(reply, kind) or reply.direction != "reply" or h.stage != stage:
                reason = f"expected a '{stage}' reply, got {type(reply).__name__} for stage '{h.stage}'"
            elif h.round_id != self.round_id or h.server_round != self.server_round:
                reason = (f"reply for another round (round {h.server_round}, id {h.round_id.hex()[:12]}): "
                          "replayed or stale")
            elif h.node_id != sender:
                reason = f"reply claims to be from node {h.node_id}"
            elif sender not in expected:
                reason = f"node {sender} was not asked for stage '{stage}'"
            elif sender in accepted:
                reason = "duplicate reply"
            if reason is None:
                accepted[sender] = reply
            else:
                self.reject(sender, f"stage '{stage}': {reason}")
        return accepted

    def reject(self, node: int, reason: str) -> None:
        """Record why ``node``'s message was refused (the node then counts as dropped)."""
        self.rejections.setdefault(node, reason)

    def _require(self, stage: str, alive: set[int], need_neighbours: bool) -> None:
        t = self.config.threshold
        if len(alive) < t:
            raise SecAggAbortedError(
                f"secure aggregation round {self.server_round} aborted at stage '{stage}': {len(alive)} of "
                f"{len(self.nodes)} sites remain, fewer than the threshold t={t}; nothing was aggregated"
            )
        if need_neighbours:
            short = {i: len(set(self.graph[i]) & alive) for i in alive}
            short = {i: c for i, c in short.items() if c < t}
            if short:
                i, c = next(iter(short.items()))
                raise SecAggAbortedError(
                    f"secure aggregation round {self.server_round} aborted at stage '{stage}': {len(short)} site(s) "
                    f"keep fewer than t={t} live neighbours (node {i}: {c} of {self.config.num_neighbours}); "
                    f"more than k−t={self.config.dropout_tolerance} sites dropped; nothing was aggregated"
                )

    # ----------------------------------------------------------------- stages
    def setup_requests(self) -> dict[int, SetupRequest]:
        """Stage 0 requests: the node list and parameters, to every sampled node without keys drawn ahead.

        Empty when every node drew its keys ahead: then call :meth:`receive_setup` with no replies.
        """
        self._advance("start", SETUP)
        return {n: SetupRequest(self._header(SETUP, n), self.nodes, self.config) for n in self.nodes
                if n not in self.ahead}

    def receive_setup(self, replies: Mapping[int, SetupReply]) -> None:
        self.advertised.update(self.ahead)
        accepted = self._accept(replies, SETUP, set(self.nodes) - set(self.ahead), SetupReply)
        for node, reply in accepted.items():
            if len(reply.channel_key) != 32 or len(reply.mask_key) != 32 or len(reply.seed_commitment) != 32:
                self.reject(node, "stage 'setup': public keys and commitment must be 32 bytes")
            else:
                self.advertised[node] = reply
        self._require(SETUP, set(self.advertised), need_neighbours=True)

    def share_keys_requests(self) -> dict[int, ShareKeysRequest]:
        """Stage 1 requests: each advertiser gets its live neighbours' public keys.

        A node whose keys were drawn ahead also gets the node list, the parameters and its keys' id.
        """
        self._advance(SETUP, SHARE_KEYS)
        requests = {}
        for i in self.advertised:
            live = [j for j in self.graph[i] if j in self.advertised]
            opening: dict[str, Any] = {}
            if i in self.ahead:
                opening = {"nodes": self.nodes, "config": self.config, "key_id": self.ahead[i].key_id}
            requests[i] = ShareKeysRequest(
                self._header(SHARE_KEYS, i), {j: self.advertised[j].channel_key for j in live},
                {j: self.advertised[j].mask_key for j in live}, keys_ahead=self.keys_ahead, **opening,
            )
        return requests

    def receive_share_keys(self, replies: Mapping[int, ShareKeysReply]) -> None:
        accepted = self._accept(replies, SHARE_KEYS, set(self.advertised), ShareKeysReply)
        if self.keys_ahead:  # kept even if this session aborts below: they are fresh and unused
            self.next_keys = {i: r.ahead for i, r in accepted.items() if r.ahead is not None and r.ahead.well_formed()}
        for node, reply in accepted.items():
            live = {j for j in self.graph[node] if j in self.advertised}
            if set(reply.ciphertexts) != live:
                self.reject(node, "stage 'share-keys': ciphertexts not addressed to exactly its live neighbours")
            else:
                self.shared[node] = dict(reply.ciphertexts)
        self._require(SHARE_KEYS, set(self.shared), need_neighbours=True)

    def masked_input_requests(self) -> dict[int, MaskedInputRequest]:
        """Stage 2 requests: each sharer gets the ciphertexts its live neighbours addressed to it."""
        self._advance(SHARE_KEYS, MASKED_INPUT)
        return {
            i: MaskedInputRequest(
                self._header(MASKED_INPUT, i), {j: self.shared[j][i] for j in self.graph[i] if j in self.shared}
            )
            for i in self.shared
        }

    def receive_masked_inputs(self, replies: Mapping[int, MaskedInputReply]) -> None:
        """Add the masked vectors into the running sum (no individual vector is kept)."""
        accepted = self._accept(replies, MASKED_INPUT, set(self.shared), MaskedInputReply)
        survivors = []
        for node, reply in accepted.items():
            vector = np.asarray(reply.masked)
            length = self.length if self.length is not None else (self._sum.size if self._sum is not None else None)
            if vector.dtype != np.uint32 or vector.ndim != 1 or (length is not None and vector.size != length):
                self.reject(node, f"stage 'masked-input': expected a uint32 vector of length {length}, "
                                  f"got {vector.dtype} of shape {vector.shape}")
                continue
            if self._sum is None:
                self._sum = vector.copy()
            else:
                np.add(self._sum, vector, out=self._sum)
            survivors.append(node)
        self.survivors = tuple(sorted(survivors))
        self.dropped = tuple(sorted(set(self.shared) - set(self.survivors)))
        self._require(MASKED_INPUT, set(self.survivors), need_neighbours=False)

    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        """Stage 3 requests: the survivor and dropout lists, to every survivor."""
        self._advance(MASKED_INPUT, UNMASK)
        return {i: UnmaskRequest(self._header(UNMASK, i), self.survivors, self.dropped) for i in self.survivors}

    def receive_unmask(self, replies: Mapping[int, UnmaskReply]) -> np.ndarray:
        """Rebuild the needed secrets, remove every mask, and return the decoded payload sum."""
        accepted = self._accept(replies, UNMASK, set(self.survivors), UnmaskReply)
        self.unmaskers = tuple(sorted(accepted))
        self._require(UNMASK, set(accepted), need_neighbours=False)
        seeds = {i: self._rebuild(i, accepted, "seed") for i in self.survivors}
        mask_keys = {i: self._rebuild(i, accepted, "key") for i in self.dropped}
        assert self._sum is not None
        total, self._sum = self._sum, None
        expander = MaskExpander.for_length(total.size)
        for i in self.survivors:
            expander.subtract(total, seeds[i])
        for i in self.dropped:
            for j in self.graph[i]:
                if j in self.survivors:
                    seed = keys.mask_seed(mask_keys[i], self.advertised[j].mask_key, self.round_id, i, j)
                    (expander.subtract if j < i else expander.add)(total, seed)
        self.stage = "done"
        return dequantize(total, self.config.effective_scale)

    def _rebuild(self, node: int, replies: Mapping[int, UnmaskReply], kind: str) -> bytes:
        holders = [j for j in self.graph[node] if j in replies]
        shares = []
        for j in holders:
            data = (replies[j].seed_shares if kind == "seed" else replies[j].key_shares).get(node)
            if data is not None:
                share = shamir.Share.from_bytes(data)
                if share.x == self.points[j]:
                    shares.append(share)
        t = self.config.threshold
        if len(shares) < t:
            what = "self-mask seed" if kind == "seed" else "mask key (it dropped after sharing)"
            raise SecAggAbortedError(
                f"secure aggregation round {self.server_round} aborted at stage 'unmask': node {node}'s {what} "
                f"needs t={t} shares but only {len(shares)} of its {len(self.graph[node])} neighbours returned one; "
                f"more than k−t={self.config.dropout_tolerance} sites dropped; nothing was aggregated"
            )
        try:
            secret = shamir.combine(shares, t)
            if kind == "seed":
                binding = self.ahead[node].key_id if node in self.ahead else self.round_id
                valid = keys.equal(seed_commitment(binding, node, secret), self.advertised[node].seed_commitment)
            else:
                valid = keys.equal(keys.public_of(secret), self.advertised[node].mask_key)
        except SecAggAuthenticationError:
            valid = False
        if not valid:
            raise SecAggAbortedError(
                f"secure aggregation round {self.server_round} aborted at stage 'unmask': the shares returned for "
                f"node {node}'s {'self-mask seed' if kind == 'seed' else 'mask key'} do not rebuild the secret it "
                "committed to at setup (altered or forged shares); nothing was aggregated"
            )
        return secret

    def run_stage(self, stage: str, replies: Mapping[int, _Message]) -> Any:
        """Feed ``stage``'s replies to its receiver (convenience for adapters)."""
        receiver = {SETUP: self.receive_setup, SHARE_KEYS: self.receive_share_keys,
                    MASKED_INPUT: self.receive_masked_inputs, UNMASK: self.receive_unmask}[stage]
        return receiver(replies)  # type: ignore[operator]
