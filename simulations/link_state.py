"""An in-memory Flower LinkState that finds a node's next message by index instead of by scan.

Why this exists: Flower's simulation engine hands messages to its Ray actors
from a thread that asks the LinkState, for *every* virtual node, every 0.1 s,
for that node's next undelivered message (``flwr 1.41``,
``vce_api.add_messages_to_queue``), and ``InMemoryLinkState.get_message_ins``
answers each question by scanning every stored instruction, running its
expiry and federation check on each (``_check_stored_messages``). That is
O(sites × stored messages) per 0.1 s for as long as a round lasts: at 200
virtual sites it was 60 % of the driver's CPU time in a SecAgg+ round (four
message waves per round), and it grows quadratically with the sites
(``benchmarks/simulation.py``, RESULTS.md, 2026-12-06).

:class:`IndexedLinkState` *is* Flower's ``InMemoryLinkState`` and changes one
thing: it keeps, per destination node, the ids of the instructions not yet
handed out, in the order they were stored, so a node's poll looks only at its
own messages. What a node receives, and when, is unchanged:

* the same messages in the same (storage) order, at most ``limit``, filtered
  by ``run_id`` when given (a message of another run stays queued);
* each candidate still goes through Flower's own ``_check_stored_messages``
  (expiry, federation membership) before it is handed out, so an expired
  instruction is deleted, never delivered;
* an instruction already delivered or deleted (expired, or its reply pulled)
  simply leaves the index.

What differs: Flower's scan also ran the expiry check on *other* nodes'
messages, including delivered ones, at every poll. Here an undelivered message
is checked when its own node polls (every node polls every 0.1 s), and a
delivered one when its reply is stored or pulled, where Flower checks it
again anyway (``store_message_res``, ``get_message_res``), so an expired
instruction's reply is refused the same way.

:func:`indexed_link_state` installs it for one ``run_simulation`` call (the
engine builds its state factory inside ``flwr.simulation.run_simulation``) and
restores Flower's factory afterwards; on a Flower whose in-memory state lacks
the methods this relies on, it leaves Flower's own state in place and logs so.
It changes nothing in a deployment (the SuperLink's state is its own process's).
"""

from __future__ import annotations

import importlib
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from flwr.app import Message
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState, LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.date import now

from simulations import logger
from simulations.engine_patch import replaced


class IndexedLinkState(InMemoryLinkState):
    """Flower's in-memory LinkState with a per-node queue of undelivered instruction ids."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, deque[str]] = {}

    def store_message_ins(self, message: Message) -> str | None:
        """Store one instruction as Flower does, then queue its id for its destination node."""
        with self.lock:
            known = message.metadata.message_id in self.message_ins_store
            message_id = super().store_message_ins(message)
            if message_id is not None and not known:
                self._pending.setdefault(message.metadata.dst_node_id, deque()).append(message_id)
        return message_id

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
        """The node's undelivered instructions (oldest first, at most ``limit``), now marked delivered."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Message] = []
        with self.lock:
            queue = self._pending.get(node_id)
            other_runs: list[str] = []
            while queue and not (limit and len(found) == limit):
                message_id = queue.popleft()
                self._check_stored_messages({message_id})  # Flower's expiry and federation check
                message = self.message_ins_store.get(message_id)
                if message is None or message.metadata.delivered_at != "" or message.metadata.dst_node_id != node_id:
                    continue  # deleted, expired or already handed out: it leaves the index
                if run_id is not None and message.metadata.run_id != run_id:
                    other_runs.append(message_id)
                    continue
                found.append(message)
            if queue is not None and other_runs:
                queue.extendleft(reversed(other_runs))
            delivered_at = now().isoformat()
            for message in found:
                message.metadata.delivered_at = delivered_at
        return found


class IndexedLinkStateFactory(LinkStateFactory):
    """Flower's ``LinkStateFactory`` whose in-memory state is an :class:`IndexedLinkState`."""

    def state(self) -> LinkState:
        if self.database != FLWR_IN_MEMORY_DB_NAME or self.state_instance is not None:
            return super().state()
        with self._state_lock:
            if self.state_instance is None:
                self.state_instance = IndexedLinkState(self.federation_manager, self.objectstore_factory.store())
            return self.state_instance


_installed = threading.Lock()


def _engine() -> ModuleType:
    """Flower's ``flwr.simulation.run_simulation`` *module* (the package exports a function of that name)."""
    return importlib.import_module("flwr.simulation.run_simulation")


def supported() -> bool:
    """Whether this Flower's in-memory state and simulation entry point are the ones this module wraps."""
    engine = _engine()
    attributes = InMemoryLinkState.__init__.__code__.co_names  # set in __init__: message_ins_store, lock
    return (getattr(engine, "LinkStateFactory", None) is LinkStateFactory
            and callable(getattr(InMemoryLinkState, "_check_stored_messages", None))
            and "message_ins_store" in attributes and "lock" in attributes)


@contextmanager
def indexed_link_state() -> Iterator[bool]:
    """Run the simulation engine started inside this block on an :class:`IndexedLinkState`; yields whether it does.

    One simulation at a time per process holds it (a second, concurrent one
    runs on Flower's own state rather than wait).
    """
    if not supported():
        logger.info("simulation engine: Flower's own link state (this Flower's internals differ from 1.41's)")
        yield False
        return
    with replaced(_engine(), "LinkStateFactory", lambda _: IndexedLinkStateFactory, _installed) as installed:
        yield installed
