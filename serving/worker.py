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
  blocks the loop. :class:`BatchedLineWriter` formats each line on the
  caller's thread into a list, and a writer thread writes what gathered every
  :data:`WRITE_INTERVAL` seconds with one ``write``. Unlike a queue handed to
  a listener thread per record (the logging cookbook's ``QueueListener``),
  what waits is bounded (:data:`MAX_PENDING` lines, then counted drops), and
  the writer thread wakes twenty times a second rather than once per
  request: on a saturated event loop (requests driven in-process) the
  per-record hand-off doubled a request's latency; at 1k requests/s through
  uvicorn the two cost the same CPU per request (``benchmarks/serving.py``).
  Its :class:`AccessFormatter` writes the same lines as :class:`logging.Formatter`
  but formats the timestamp's date and time once per second, not per line.
"""

from __future__ import annotations

import atexit
import gc
import logging
import threading
import time
from typing import TextIO


def settle_heap() -> None:
    """Collect once, then exempt everything alive now from future collections (call after start-up)."""
    gc.collect()
    gc.freeze()


ACCESS_LINE_FORMAT = "%(asctime)s %(name)s %(message)s"
"""The access log's format (``serving.cli.ACCESS_FORMAT``), the one :meth:`AccessFormatter.line` writes."""


class AccessFormatter(logging.Formatter):
    """:class:`logging.Formatter` with ``formatTime`` cached per second (no ``datefmt``: the default format).

    ``time.strftime`` of the local time is most of a default formatter's cost
    per access line, and every line within one second shares it; the
    milliseconds are added per line as :meth:`logging.Formatter.formatTime` adds them.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._cached: tuple[int, str] = (-1, "")  # (second, its formatted date and time): one object, swapped whole

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt:
            return super().formatTime(record, datefmt)
        return f"{self._second(record.created)},{int(record.msecs):03d}"  # as default_msec_format, "%s,%03d"

    def _second(self, created: float) -> str:
        """The date and time of ``created``'s second, formatted once per second."""
        second = int(created)
        cached = self._cached
        if cached[0] != second:  # threads racing here only format the same second twice
            cached = self._cached = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created)))
        return cached[1]

    def line(self, name: str, message: str, created: float) -> str | None:
        """What :meth:`format` writes for a record of ``name`` made at ``created``, built without a record.

        Only for this module's access format (``%(asctime)s %(name)s %(message)s``); ``None`` for any other,
        and the caller goes through :mod:`logging`.
        """
        if self._fmt != ACCESS_LINE_FORMAT:
            return None
        msecs = int((created - int(created)) * 1000)  # as LogRecord computes its msecs
        return f"{self._second(created)},{msecs:03d} {name} {message}"


WRITE_INTERVAL = 0.05
"""Seconds between the writer thread's batches: how late an access line may appear."""

MAX_PENDING = 100_000
"""Lines held while the stream does not keep up; past this, lines are counted and dropped, not queued."""


class BatchedLineWriter(logging.Handler):
    """Formats records into lines on the caller's thread; a daemon thread writes them in batches, in order.

    Lines reach ``stream`` at most :data:`WRITE_INTERVAL` seconds late, and
    all of them at a clean exit (:meth:`close` runs at exit). If the stream
    blocks for so long that :data:`MAX_PENDING` lines wait, later lines are
    dropped and counted, and the count is written once the stream drains:
    memory stays bounded and the request path never waits for the log.
    """

    def __init__(self, stream: TextIO, *, interval: float = WRITE_INTERVAL, max_pending: int = MAX_PENDING) -> None:
        super().__init__()
        self.stream, self.interval, self.max_pending = stream, interval, max_pending
        self._pending: list[str] = []
        self._dropped = 0
        self._write_lock = threading.Lock()  # one writer at a time: the thread, flush() or close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedguard-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        """Called by :meth:`logging.Handler.handle` with ``self.lock`` held."""
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract: handleError reports it, the caller goes on
            self.handleError(record)
            return
        if self._queue(line):
            self.flush()

    def add_line(self, line: str) -> None:
        """Queue an already formatted ``line``, as :meth:`emit` queues a record's."""
        with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
            closed = self._queue(line)
        if closed:
            self.flush()

    def _queue(self, line: str) -> bool:
        """Append ``line`` to the pending batch (``self.lock`` held), or count it dropped when the batch is full.

        True when the caller must flush: closed (logging reconfigured, or exiting), no writer thread is left.
        """
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            return False
        self._pending.append(line)
        return self._stop.is_set()

    def flush(self) -> None:
        """Write every pending line now, on the calling thread."""
        with self._write_lock:
            with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
                lines, self._pending = self._pending, []
                dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.append(f"fedguard: {dropped} log line(s) dropped: the log stream did not keep up")
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):  # a closed or broken stream: nothing left to write to
                    pass

    def close(self) -> None:
        """Stop the writer thread and write what is left (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        super().close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
