"""In-memory drivers for the SecAgg+ state machines and the Flower adapters (no Ray, no network)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer
from privacy.secagg.messages import MASKED_INPUT, SETUP, SHARE_KEYS, UNMASK, AheadKeys, _Message, decode

STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)


def wire(message: _Message) -> _Message:
    """Encode and decode, as the transport would."""
    return decode(message.to_record(), getattr(message, "masked", None))


@dataclass
class Federation:
    """n clients and a server; ``drop[stage]`` = nodes that go silent from that stage on."""

    config: SecAggConfig
    payloads: dict[int, np.ndarray]
    drop: Mapping[str, set[int]] = field(default_factory=dict)
    server_round: int = 1
    tamper: Callable[[str, int, _Message], _Message] | None = None
    keys_ahead: bool = False
    ahead: Mapping[int, AheadKeys] = field(default_factory=dict)
    """Keys the sites drew at an earlier session's unmask (``server.next_keys`` there)."""
    sites: dict[int, SecAggClient] | None = None
    """The sites of an earlier session, carried over with their state (default: fresh ones)."""

    def __post_init__(self) -> None:
        self.nodes = sorted(self.payloads)
        self.clients = self.sites if self.sites is not None else {n: SecAggClient(n) for n in self.nodes}
        length = next(iter(self.payloads.values())).size
        self.server = SecAggServer(self.config, self.nodes, self.server_round, length=length, ahead=self.ahead,
                                   keys_ahead=self.keys_ahead)
        self.sent: dict[str, dict[int, _Message]] = {}

    def silent(self, stage: str) -> set[int]:
        out: set[int] = set()
        for s in STAGES[: STAGES.index(stage) + 1]:
            out |= set(self.drop.get(s, set()))
        return out

    def answer(self, stage: str, requests: Mapping[int, _Message]) -> dict[int, _Message]:
        replies = {}
        for node, request in requests.items():
            if node in self.silent(stage):
                continue
            request = wire(request)
            if self.tamper is not None:
                request = self.tamper(stage, node, request)
            payload = self.payloads[node] if stage == MASKED_INPUT else None
            replies[node] = wire(self.clients[node].handle(request, payload))
        self.sent[stage] = replies
        return replies

    def run(self) -> np.ndarray:
        s = self.server
        s.receive_setup(self.answer(SETUP, s.setup_requests()))
        s.receive_share_keys(self.answer(SHARE_KEYS, s.share_keys_requests()))
        s.receive_masked_inputs(self.answer(MASKED_INPUT, s.masked_input_requests()))
        return s.receive_unmask(self.answer(UNMASK, s.unmask_requests()))


def unmask_with_a_forged_seed_share(federation: Federation) -> np.ndarray:
    """The unmask stage with one bit of the first node's first seed share flipped, and that share used first."""
    s = federation.server
    replies: dict[int, Any] = federation.answer(UNMASK, s.unmask_requests())
    holder = federation.nodes[0]
    target, share = next(iter(replies[holder].seed_shares.items()))
    forged = share[:-1] + bytes([share[-1] ^ 1])
    replies[holder] = dataclasses.replace(replies[holder], seed_shares={**replies[holder].seed_shares, target: forged})
    ordered = {holder: replies[holder], **{n: r for n, r in replies.items() if n != holder}}
    s.graph = {n: tuple(sorted(g, key=lambda j: j != holder)) for n, g in s.graph.items()}
    return s.receive_unmask(ordered)


def random_payloads(nodes: Iterable[int], dim: int, config: SecAggConfig,
                    rng: np.random.Generator) -> dict[int, np.ndarray]:
    """``[w·Δ, w]`` with ‖Δ‖ ≤ C and 0 < w ≤ max_weight, as the mod would build them."""
    out = {}
    for node in nodes:
        delta = rng.normal(size=dim)
        delta *= min(1.0, config.clip_norm / max(np.linalg.norm(delta), 1e-12)) * rng.uniform(0.1, 1.0)
        weight = float(rng.integers(1, int(config.max_weight) + 1))
        out[node] = np.concatenate([weight * delta, [weight]])
    return out


def node_ids(n: int, seed: int = 0) -> list[int]:
    """Flower-like 64-bit node ids."""
    ids = np.random.default_rng(seed).integers(1, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    return sorted({int(x) for x in ids})


class LocalGrid:
    """A Flower Grid that delivers messages in-process to a ClientApp (one Context per node).

    ``received`` records every reply the coordinator side received (for the instrumentation test);
    ``silence`` lets a test make nodes stop answering train messages from a given stage on.
    """

    def __init__(self, app: ClientApp, n: int, *, run_config: dict | None = None, seed: int = 0) -> None:
        from flwr.serverapp import Grid
        from flwr.supercore.task_identity import TaskIdentity

        Grid.register(LocalGrid)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app = app
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": i}, state=RecordDict(),
                                       run_config=dict(run_config or {})) for i, node in enumerate(node_ids(n, seed))}
        self.received: list[Message] = []
        self.silence: Callable[[Message], bool] = lambda message: False

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        from flwr.app import Error

        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if self.silence(message):
                continue
            try:
                reply = self.app(message, self.contexts[node])
            except Exception as error:  # noqa: BLE001 (the grid turns an app failure into an error reply)
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=message)
            replies.append(reply)
        self.received.extend(replies)
        return replies
