"""One of Flower's module attributes replaced for the duration of one simulation.

fedguard wraps parts of Flower's simulation engine that Flower builds by
name inside ``run_simulation`` (its in-memory LinkState factory,
:mod:`simulations.link_state`; its Ray backend, :mod:`simulations.app_loader`).
The replacement holds for one block and Flower's own object comes back after
it, whatever happened inside. A module attribute is process-wide, so one
block at a time holds each replacement: a second simulation started
concurrently in the same process runs on Flower's own object rather than wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any


@contextmanager
def replaced(module: ModuleType, name: str, replacement: Callable[[Any], Any], lock: threading.Lock) -> Iterator[bool]:
    """Set ``module.name`` to ``replacement(Flower's object)`` for this block; yields whether it did.

    ``lock`` is the replacement's own (held for the block); when another block holds it, nothing is
    replaced and the block gets False.
    """
    if not lock.acquire(blocking=False):
        yield False
        return
    flower = getattr(module, name)
    try:
        setattr(module, name, replacement(flower))
        yield True
    finally:
        setattr(module, name, flower)
        lock.release()
