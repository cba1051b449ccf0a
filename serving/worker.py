"""Process-wide settings of a serving worker that keep pauses off the request path.

A single uvicorn worker answers every request on one event loop, so anything
that stops the loop for a few milliseconds stops every request in flight; at
1k requests/s a 10 ms pause queues ten of them (``benchmarks/serving.py``
measures the p99 this decides). Two such pauses are process-wide, not
per-route, and are set here once, when ``fedguard serve`` starts:

- the cyclic garbage collector's full (oldest-generation) pass walks every
  container object the process holds: with torch, FastAPI, pydantic and
  SQLAlchemy imported and a model loaded that is hundreds of thousands of
  objects, a pause of tens to hundreds of milliseconds whenever it runs.
  :func:`settle_heap` collects once and then *freezes* what is alive after
  start-up (:func:`gc.freeze`, the documented way to exempt a long-lived heap
  from collection), so later passes only walk what requests allocate;
- writing the access log: a line per request to stderr, which in a container
  is a pipe that a slow log collector can let fill up, and then ``write``
  blocks the loop. :func:`off_the_event_loop` hands records to a
  :class:`logging.handlers.QueueListener` thread (the pattern of the logging
  cookbook's "Dealing with handlers that block").
"""

from __future__ import annotations

import atexit
import gc
import logging
import queue
from logging.handlers import QueueHandler, QueueListener


def settle_heap() -> None:
    """Collect once, then exempt everything alive now from future collections (call after start-up)."""
    gc.collect()
    gc.freeze()


def off_the_event_loop(handler: logging.Handler) -> logging.Handler:
    """A handler that queues records for ``handler``, which a background thread writes; flushed at exit.

    The record's message is formatted when it is queued (:class:`QueueHandler`),
    so the writer sees the values of the moment, not later ones.
    """
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # drains the queue: no line is lost at a clean exit
    return QueueHandler(records)
