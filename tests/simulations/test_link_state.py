"""The indexed link state hands each node exactly what Flower's own in-memory state would, in the same order."""

from __future__ import annotations

import importlib
import random
import secrets
import time

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from simulations.link_state import IndexedLinkState, IndexedLinkStateFactory, indexed_link_state, supported

NODES = 12
engine = importlib.import_module("flwr.simulation.run_simulation")  # the module; the package exports a function


class World:
    """A state with runs and ``NODES`` nodes, and grids that push instructions to them, as the engine builds it."""

    def __init__(self, factory_type: type[LinkStateFactory], run_ids: tuple[int, ...] = (7,)) -> None:
        factory = factory_type(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        state = factory.state()
        assert isinstance(state, InMemoryLinkState)
        self.state = state
        self.grids = {}
        for number, run_id in enumerate(run_ids):
            run = Run.create_empty(run_id=run_id)
            task_id = 100 + number
            run.primary_task_id, run.federation_id = task_id, NOOP_FEDERATION_ID
            state.run_ids[run_id] = RunRecord(run=run)
            state.task_store[task_id] = Task(task_id=task_id, run_id=run_id)
            grid = InMemoryGrid(state_factory=factory)
            grid.set_run(run)
            self.grids[run_id] = grid
        self.nodes = []
        for _ in range(NODES):
            node = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                     heartbeat_interval=HEARTBEAT_INTERVAL_INF)
            state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
            self.nodes.append(node)

    def push(self, node_index: int, tag: str, run_id: int = 7, ttl: float | None = None) -> None:
        TaskIdentity.run_id = run_id  # the ServerApp's run: messages take their run id from it
        content = RecordDict()
        message = Message(content, self.nodes[node_index], "train", ttl=ttl, group_id=tag)
        assert list(self.grids[run_id].push_messages([message]))

    def poll(self, node_index: int, limit: int | None, run_id: int | None = None) -> list[str]:
        """The group ids (tags) of what the node receives now."""
        got = self.state.get_message_ins(node_id=self.nodes[node_index], limit=limit, run_id=run_id)
        assert all(m.metadata.delivered_at != "" for m in got)
        return [m.metadata.group_id for m in got]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp's process identity that the engine sets before it runs (restored after each test)."""
    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


def test_the_engine_is_wrapped_as_this_flower_has_it() -> None:
    assert supported()
    assert isinstance(World(IndexedLinkStateFactory).state, IndexedLinkState)


@pytest.mark.parametrize("seed", range(5))
def test_every_poll_returns_what_flowers_scan_returns(seed: int) -> None:
    rng = random.Random(seed)
    flower, indexed = World(LinkStateFactory, (7, 8)), World(IndexedLinkStateFactory, (7, 8))
    for step in range(600):
        node = rng.randrange(NODES)
        if rng.random() < 0.5:
            run_id = rng.choice((7, 8))
            for world in (flower, indexed):
                world.push(node, f"m{step}", run_id)
        else:
            limit = rng.choice((1, 1, 2, None))
            only = rng.choice((None, None, 7, 8))
            assert indexed.poll(node, limit, only) == flower.poll(node, limit, only), step
    for node in range(NODES):  # what is left, in order
        assert indexed.poll(node, None) == flower.poll(node, None)


def test_an_expired_instruction_is_deleted_never_delivered() -> None:
    for world in (World(LinkStateFactory), World(IndexedLinkStateFactory)):
        world.push(0, "short", ttl=0.05)
        world.push(0, "long")
        time.sleep(0.1)
        assert world.poll(0, None) == ["long"]
        assert not any(m.metadata.group_id == "short" for m in world.state.message_ins_store.values())


def test_the_index_forgets_what_the_grid_deleted() -> None:
    world = World(IndexedLinkStateFactory)
    world.push(3, "a")
    world.push(3, "b")
    state = world.state
    first = next(mid for mid, m in state.message_ins_store.items() if m.metadata.group_id == "a")
    state.delete_messages({first})
    assert world.poll(3, 1) == ["b"]
    assert world.poll(3, 1) == []
    assert isinstance(state, IndexedLinkState) and not state._pending[world.nodes[3]]


def test_the_engine_gets_it_for_one_block_and_flowers_factory_back_after() -> None:
    assert engine.LinkStateFactory is LinkStateFactory
    with indexed_link_state() as installed:
        assert installed and engine.LinkStateFactory is IndexedLinkStateFactory
        with indexed_link_state() as nested:  # a second simulation at once runs on Flower's own state
            assert not nested and engine.LinkStateFactory is IndexedLinkStateFactory
    assert engine.LinkStateFactory is LinkStateFactory
    with pytest.raises(RuntimeError), indexed_link_state():
        raise RuntimeError("the engine failed")
    assert engine.LinkStateFactory is LinkStateFactory
