"""One torch thread in the simulation's driver process while Ray's actors hold the cores.

The driver trains the central baseline and, in the ServerApp's thread,
evaluates every round's model and embeds the watermark: small models on small
batches. With torch's default of one intra-op thread per core, each of those
calls spins up a thread pool on cores the Ray actors (one per core) are
using; under contention every backward pass then waits on its second thread.
Measured on the 2-core machine under load (benchmarks/simulation.py,
2026-12-04): the central baseline took 3.5× the CPU time and 3.3× the wall
time with two threads as with one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread; the previous setting comes back after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
