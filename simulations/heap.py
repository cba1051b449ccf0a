"""The driver's heap kept out of the garbage collector's full passes while a simulation runs.

By the time the engine starts, the driver process holds most of the objects it
will ever hold (torch, Ray, Flower and fedguard imported, the data loaded, the
model built: ~800,000 tracked objects at 200 sites), and CPython 3.11 walks all
of them in every full (generation 2) collection. The rounds allocate enough to
trigger one every few rounds: 0.40 of 9.5 CPU-s in the driver over 30 s of
steady rounds, 0.03 with the heap frozen (``benchmarks/simulation.py``, 200
sites, a ``gc.callbacks`` probe; RESULTS.md, 2026-12-06). :func:`frozen_heap`
moves what exists when the block starts into the permanent generation
(``gc.freeze``) and returns it to the collector when the block ends
(``gc.unfreeze``), so a process that runs several simulations (tests, sweeps)
still collects the cycles they leave. A process whose heap something else froze
already (``serving.worker.settle_heap``) is left as it is: ``gc.unfreeze`` would
undo that freeze too.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now for the duration of the block (see the module docstring)."""
    if gc.get_freeze_count():  # someone else manages this heap's freeze
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
