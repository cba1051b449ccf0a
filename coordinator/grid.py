"""A grid wrapper that waits for replies without Flower's 3-second sleeps.

Flower's deployment grid (``HttpGrid.send_and_receive``) pulls replies,
then sleeps 3 s before pulling again; a SecAgg+ round is four exchanges, so
that alone costs up to 12 s per round. :class:`ResponsiveGrid` keeps every
other method of the wrapped grid and re-implements only the wait, with the
interval from :mod:`coordinator.runtime_options`. In simulation (Flower's
in-memory grid, already 0.1 s) it is not used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from coordinator.runtime_options import grid_poll_seconds
from federation.runtime_options import trace, trace_rpcs, use_fast_pulls
from lifecycle.errors import TrainingError


class EngineStopped(TrainingError):
    """The engine that carries the ServerApp's messages has stopped: no reply can come any more."""


class ResponsiveGrid(Grid):
    """Delegates to ``inner``; ``send_and_receive`` pulls every ``poll`` seconds.

    ``stopped`` (a simulation: its engine failed, e.g. Ray could not start)
    is asked before every pull and node listing; once true, the ServerApp
    ends with :class:`EngineStopped` instead of waiting out its round and
    site deadlines with nobody left to answer (which kept the process alive
    for minutes after the engine had already raised).
    """

    def __init__(
        self, inner: Grid, *, poll: float | None = None, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep, stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.inner = inner
        self.poll = grid_poll_seconds() if poll is None else poll
        self._clock = clock
        self._sleep = sleep
        self._stopped = stopped

    def _check(self) -> None:
        if self._stopped():
            raise EngineStopped("the federation engine stopped before the run finished; see the error above")

    @property
    def run(self) -> Run:
        return self.inner.run

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:  # with the public key each node authenticated with
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and return the replies that arrive within ``timeout`` seconds."""
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        group = messages[0].metadata.group_id if messages else ""
        trace("grid", "push", kind=kind, group=group, n=len(messages))
        pending = set(self.inner.push_messages(messages))
        trace("grid", "pushed", kind=kind, group=group)
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        while pending:
            self._check()
            arrived = list(self.inner.pull_messages(pending))
            if arrived:
                trace("grid", "replies", kind=kind, group=group, n=len(arrived), left=len(pending) - len(arrived))
            replies.extend(arrived)
            pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not pending or (deadline is not None and self._clock() >= deadline):
                break
            self._sleep(self.poll)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def responsive(grid: Grid, stopped: Callable[[], bool] | None = None) -> Grid:
    """``grid`` wrapped in :class:`ResponsiveGrid`, unless it already polls quickly (simulation).

    With ``stopped`` (a simulation's engine), the in-memory grid is wrapped
    too, polling as often as Flower's own (0.1 s), so that the ServerApp
    ends as soon as the engine is gone.
    """
    import flwr.superlink.grid.http_grid as http_grid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if isinstance(grid, ResponsiveGrid):
        return grid
    if isinstance(grid, InMemoryGrid):
        return grid if stopped is None else ResponsiveGrid(grid, poll=0.1, stopped=stopped)
    use_fast_pulls(http_grid, "pull_objects")  # the ServerApp's pulls of replies from the SuperLink
    trace_rpcs("serverapp")  # (only with FEDGUARD_RUNTIME_TRACE set)
    return ResponsiveGrid(grid)
