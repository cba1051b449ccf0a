"""The coordinator side over Flower: a Message-API strategy wrapper running SecAgg+.

``SecAggPlusStrategy(inner, config)`` is a ``flwr.serverapp.strategy.Strategy``.
Each training round it lets ``inner`` sample the sites, runs the setup and
share-keys stages itself through the grid (the setup only for sites without
keys drawn ahead; neither when the previous unmask stage opened the session,
see ``keys_ahead``), and sends the sites the inner
strategy's own instruction (global arrays and train config) plus the
masked-input stage record. It then sums the masked vectors, runs the unmask
stage, and hands ``inner.aggregate_train`` a single synthetic reply holding
the new global model ``global + Σ(wΔ)/Σw`` weighted by ``Σw`` — so FedAvg (or
a site-level DP wrapper around it) aggregates exactly what it would have
aggregated in the clear. Evaluation and ``summary`` are delegated.

The coordinator never holds an unmasked individual update: masked vectors
are added into one accumulator, and only the sum is decoded. When fewer than
``t`` sites survive any stage the round raises :class:`SecAggAbortedError`
(a ``TrainingError``) and nothing partial is returned.

Notes
-----
Bonawitz et al. (2017); Bell et al. (2020). Wrapping rather than forking a
strategy follows Flower's ``DifferentialPrivacy*`` wrappers (fedguard §7.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privacy import logger, updates
from privacy.records import config_record, metric_items
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbortedError, SecAggConfigError, SecAggProtocolError
from privacy.secagg.messages import (
    MASKED_INPUT,
    NEXT_RECORD_KEY,
    RECORD_KEY,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    AheadKeys,
    ShareKeysRequest,
    _Message,
    decode,
)
from privacy.secagg.server import SecAggServer
from privacy.strategy_wrapper import StrategyWrapper


@dataclass
class _Round:
    server_round: int
    server: SecAggServer
    arrays: ArrayRecord
    grid: Grid


class SecAggPlusStrategy(StrategyWrapper):
    """Wrap a Message-API strategy so its training rounds aggregate through SecAgg+.

    Parameters
    ----------
    inner : Strategy
        The strategy that samples sites and aggregates (e.g. ``FedAvg``, or a site-level DP wrapper).
    config : SecAggConfig
        Protocol parameters; validated here (an overflow-prone configuration is refused).
    on_replies : Callable[[int, list[Message]], None] or None
        Called with the round and the valid masked replies (public ``metrics`` and ``site``
        records only; their arrays are masked), e.g. to keep per-site lineage.
    timeout : float
        Seconds to wait for the sites' replies at each of the protocol's own stages.
    keys_ahead : bool
        Ask each share-keys stage for the sites' next-session keys, so that a site's next session
        skips the setup stage; and open the next session during this one's unmask stage (its
        share-keys requests ride on the unmask requests) when this session's survivors all hold
        such keys: a round whose session was opened so starts at its masked-input stage, two
        message stages instead of four. The session opened ahead is used if the next round
        samples exactly those sites, else set aside (a retry of this round always is). A site that
        restarts between rounds loses its keys and drops out of one round, so this is off by
        default and on in simulations (``CoordinatorConfig.secagg_keys_ahead``).

    Notes
    -----
    The inner strategy sees one reply whose weight (``num-examples``) is ``Σw``
    and whose metrics also carry ``secagg-sites`` and ``secagg-dropped``.
    Server-side clipping in ``inner`` would clip the *aggregate*; clipping is
    done by the sites' mod (``config.clip_norm``).

    After each aggregate, ``contributors`` holds the nodes whose payloads were
    summed and ``total_weight`` their ``Σw`` (``coordinator.strategies.aggregate_guard``
    checks the sum against them). Setting ``required_contributors`` makes the
    next sessions sum exactly those nodes or nothing: a node outside it is not
    asked, and if one of them drops before its masked input arrives the round
    aborts *before* the unmask stage. A retry of a rejected round uses it,
    because two sums over sets that differ by one site disclose that site's
    update (their difference).
    """

    def __init__(
        self, inner: Strategy, config: SecAggConfig, *,
        on_replies: Callable[[int, list[Message]], None] | None = None, timeout: float = 600.0,
        keys_ahead: bool = False,
    ) -> None:
        super().__init__(inner)
        self.config = config.validate()
        self.keys_ahead = keys_ahead
        self._ahead: dict[int, AheadKeys] = {}  # node -> public keys it drew for its next session
        self._next: SecAggServer | None = None  # the session opened at the last unmask stage
        self.on_replies = on_replies
        self.timeout = timeout
        self._round: _Round | None = None
        self.contributors: frozenset[int] = frozenset()
        self.total_weight = 0.0
        self.required_contributors: frozenset[int] | None = None

    def __getattr__(self, name: str) -> Any:  # expose the inner strategy's attributes (e.g. ``sites``)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summary(self) -> None:
        c = self.config
        logger.info("SecAgg+ (fedguard): n≤%d, k=%d, t=%d, tolerates %d dropouts, C=%g, max_weight=%g, scale=%g",
                    c.num_sites, c.num_neighbours, c.threshold, c.dropout_tolerance, c.clip_norm, c.max_weight,
                    c.effective_scale)
        self.inner.summary()

    # ----------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round = None
        self.contributors, self.total_weight = frozenset(), 0.0
        instructions = _only_required(list(self.inner.configure_train(server_round, arrays, config, grid)),
                                      self.required_contributors, server_round)
        if not instructions:
            return []
        by_node = {m.metadata.dst_node_id: m for m in instructions}
        if len(by_node) != len(instructions):
            raise SecAggConfigError("the inner strategy addressed two training instructions to one node")
        length = updates.layout_of(arrays).size + 1
        server = self._take_opened(by_node, length, server_round)
        if server is None:
            server = self._new_session(list(by_node), server_round, length)
            setup = server.setup_requests()
            if setup:
                self._exchange(grid, server, SETUP, setup)
            else:  # every node drew its keys ahead: no setup stage this session
                server.receive_setup({})
            try:
                self._exchange(grid, server, SHARE_KEYS, server.share_keys_requests())
            finally:  # fresh keys for the nodes' next sessions, even if this one cannot go on
                self._ahead.update(server.next_keys)
        out = []
        for node, request in server.masked_input_requests().items():
            original = by_node[node]
            content = RecordDict({key: record for key, record in original.content.items()})
            content[RECORD_KEY] = request.to_record()
            out.append(Message(content=content, dst_node_id=node, message_type=original.metadata.message_type,
                               group_id=str(server_round)))
        self._round = _Round(server_round, server, arrays, grid)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        state, self._round = self._round, None
        if state is None or state.server_round != server_round:
            if replies:
                raise SecAggProtocolError(f"round {server_round}: train replies arrived for no SecAgg+ round")
            return self.inner.aggregate_train(server_round, [])
        server = state.server
        parsed, messages = self._parse(server, MASKED_INPUT, replies)
        try:
            server.receive_masked_inputs(parsed)  # type: ignore[arg-type]  # checked by _decode_reply
        finally:  # a node that dropped may have restarted and lost the keys it drew ahead: it gets a setup next
            for node in set(server.nodes) - set(server.survivors):
                self._ahead.pop(node, None)
        required = self.required_contributors
        if required is not None and frozenset(server.survivors) != required:
            raise SecAggAbortedError(
                f"round {server_round}: {len(required - set(server.survivors))} of the sites this session must sum "
                "sent no masked input; nothing was unmasked (a sum over other sites than the rejected attempt's "
                "would disclose the difference)"
            )
        valid = [messages[node] for node in server.survivors]
        opening = self._open_next(server)
        total, unmask_replies = self._exchange_with_replies(
            state.grid, server, UNMASK, server.unmask_requests(), {} if opening is None else opening[1])
        if opening is not None:
            self._next = self._receive_opening(opening[0], unmask_replies, server_round)
        new_arrays, weight = updates.apply_payload_sum(total, state.arrays)
        self.contributors, self.total_weight = frozenset(server.survivors), weight
        logger.info("round %d: SecAgg+ summed %d sites (%d dropped after sharing, %d rejected; %d opened with keys "
                    "drawn ahead)", server_round, len(server.survivors), len(server.dropped), len(server.rejections),
                    len(server.ahead))
        if self.on_replies is not None:
            self.on_replies(server_round, valid)
        synthetic = Message(
            content=RecordDict({"arrays": new_arrays, "metrics": self._metrics(valid, weight, server)}),
            dst_node_id=0, message_type=MessageType.TRAIN, group_id=str(server_round),
        )
        return self.inner.aggregate_train(server_round, [synthetic])

    def _metrics(self, valid: list[Message], weight: float, server: SecAggServer) -> MetricRecord:
        key = str(getattr(self.inner, "weighted_by_key", self.config.weight_key))
        values: dict[str, Any] = {key: weight, "secagg-sites": len(server.survivors),
                                  "secagg-dropped": len(server.dropped)}
        records = [r for m in valid for _, r in list(metric_items(m.content))[:1]]
        if records:
            weights = np.array([float(r.get(self.config.weight_key, 1.0)) for r in records])  # type: ignore[arg-type]
            shared = set.intersection(*(set(r) for r in records)) - {key, self.config.weight_key}
            for name in sorted(shared):
                column = [r[name] for r in records]
                if all(isinstance(v, (int, float)) for v in column) and weights.sum() > 0:
                    values[name] = float(np.average(np.array(column, dtype=float), weights=weights))
        return MetricRecord(values)

    # -------------------------------------------------------------- sessions
    def _new_session(self, nodes: list[int], server_round: int, length: int) -> SecAggServer:
        """A session for ``nodes``: those with keys drawn ahead skip its setup stage.

        Keys drawn ahead serve one session: taken out of the table whether or not it completes.
        """
        ahead = {node: self._ahead.pop(node) for node in nodes if node in self._ahead}
        return SecAggServer(self.config, nodes, server_round, length=length, ahead=ahead, keys_ahead=self.keys_ahead)

    def _open_next(self, server: SecAggServer) -> tuple[SecAggServer, dict[int, ShareKeysRequest]] | None:
        """The next session, opened for this one's survivors if each holds keys drawn ahead; its share-keys requests.

        They ride on this session's unmask requests, so the next round starts at its masked-input stage.
        """
        if not self.keys_ahead or not all(node in self._ahead for node in server.survivors):
            return None
        try:
            nxt = self._new_session(list(server.survivors), server.server_round + 1, server.length or 0)
            nxt.setup_requests()  # empty: every node drew its keys ahead
            nxt.receive_setup({})
        except (SecAggConfigError, SecAggAbortedError) as error:  # e.g. too few survivors for a session
            logger.info("round %d: no SecAgg+ session opened ahead: %s", server.server_round, error)
            return None
        return nxt, nxt.share_keys_requests()

    def _take_opened(self, by_node: Mapping[int, Message], length: int, server_round: int) -> SecAggServer | None:
        """The session opened at the last unmask stage, if it is for this round, exactly these nodes and this model.

        A retry of the round before (the aggregate guard's) does not match: it gets a session of its own,
        which the sites accept because a session opened in advance does not raise their round floor.
        """
        opened, self._next = self._next, None
        if opened is None:
            return None
        if opened.server_round != server_round or set(opened.nodes) != set(by_node) or opened.length != length:
            logger.info("round %d: the SecAgg+ session opened ahead was for another round or other sites; a new "
                        "one is set up", server_round)
            return None
        return opened

    def _receive_opening(self, opened: SecAggServer, replies: list[Message], server_round: int) -> SecAggServer | None:
        """The opened session after its share-keys replies (beside the unmask replies), or None if it cannot go on."""
        parsed: dict[int, _Message] = {}
        for reply in replies:
            record = None if reply.has_error() else config_record(reply.content, NEXT_RECORD_KEY)
            if record is None:
                continue
            node = int(reply.metadata.src_node_id)
            try:
                parsed[node] = decode(record)
            except SecAggProtocolError as error:
                opened.reject(node, f"stage 'share-keys': {error}")
        try:
            opened.receive_share_keys(parsed)  # type: ignore[arg-type]  # _accept checks each reply's type
        except SecAggAbortedError as error:
            logger.info("round %d: the SecAgg+ session opened ahead cannot go on (%s); the next round sets one up",
                        server_round, error)
            return None
        finally:
            self._ahead.update(opened.next_keys)
        return opened

    # ------------------------------------------------------------- transport
    def _exchange(self, grid: Grid, server: SecAggServer, stage: str, requests: Mapping[int, _Message]) -> Any:
        return self._exchange_with_replies(grid, server, stage, requests)[0]

    def _exchange_with_replies(
        self, grid: Grid, server: SecAggServer, stage: str, requests: Mapping[int, _Message],
        openings: Mapping[int, _Message] | None = None,
    ) -> tuple[Any, list[Message]]:
        """Send ``stage``'s requests (with the next session's ``openings`` beside them) and run the stage."""
        messages = []
        for node, request in requests.items():
            content = RecordDict({RECORD_KEY: request.to_record()})
            if openings and node in openings:
                content[NEXT_RECORD_KEY] = openings[node].to_record()
            messages.append(Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN,
                                    group_id=str(server.server_round)))
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        parsed, _ = self._parse(server, stage, replies)
        return server.run_stage(stage, parsed), replies

    @staticmethod
    def _parse(server: SecAggServer, stage: str,
               replies: list[Message]) -> tuple[dict[int, _Message], dict[int, Message]]:
        parsed: dict[int, _Message] = {}
        messages: dict[int, Message] = {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                logger.warning("round %d: node %d dropped at stage '%s': %s", server.server_round, node, stage,
                               reply.error.reason)
                server.reject(node, f"stage '{stage}': error reply: {reply.error.reason}")
                continue
            if node in parsed:
                server.reject(node, f"stage '{stage}': duplicate reply")
                logger.warning("round %d: duplicate '%s' reply from node %d ignored", server.server_round, stage, node)
                continue
            try:
                parsed[node] = _decode_reply(reply, stage)
                messages[node] = reply
            except SecAggProtocolError as error:
                logger.warning("round %d: reply from node %d rejected: %s", server.server_round, node, error)
                server.reject(node, f"stage '{stage}': {error}")
        return parsed, messages


def _only_required(instructions: list[Message], required: frozenset[int] | None, server_round: int) -> list[Message]:
    """The instructions to the ``required`` nodes (all when None); every required node must be among them."""
    if required is None:
        return instructions
    kept = [m for m in instructions if m.metadata.dst_node_id in required]
    if {m.metadata.dst_node_id for m in kept} != required:
        raise SecAggAbortedError(f"round {server_round}: not every site this session must sum was sampled; "
                                 "nothing was sent")
    return kept


def _decode_reply(reply: Message, stage: str) -> _Message:
    record = config_record(reply.content, RECORD_KEY)
    if record is None:
        raise SecAggProtocolError("the reply carries no 'secagg' record (is the site's secaggplus_mod installed?)")
    masked = None
    if stage == MASKED_INPUT:
        arrays = reply.content.array_records
        if len(arrays) != 1 or len(next(iter(arrays.values()))) != 1:
            raise SecAggProtocolError("a masked-input reply must hold exactly one ArrayRecord with one array")
        masked = updates.array_view(next(iter(next(iter(arrays.values())).values())))
        if masked.dtype != np.uint32 or masked.ndim != 1:
            raise SecAggProtocolError(f"a masked vector must be 1-D uint32, got {masked.dtype} {masked.shape}")
    elif reply.content.array_records:
        raise SecAggProtocolError(f"a '{stage}' reply must not carry arrays")
    message = decode(record, masked)
    if message.header.stage != stage:
        raise SecAggProtocolError(f"expected a '{stage}' reply, got one for stage '{message.header.stage}'")
    return message
