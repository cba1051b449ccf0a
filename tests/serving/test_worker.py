"""Process-wide settings of the serving worker: a frozen start-up heap, an access log written off the loop."""

from __future__ import annotations

import gc
import io
import logging
import subprocess
import sys
import threading
import time

from serving.worker import off_the_event_loop, settle_heap


def test_settle_heap_freezes_what_start_up_left_alive() -> None:
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_records_are_written_by_another_thread_in_order() -> None:
    stream = io.StringIO()
    writers: list[str] = []

    class Recording(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            writers.append(threading.current_thread().name)
            super().emit(record)

    sink = Recording(stream)
    sink.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("fedguard.test.worker")
    logger.propagate = False
    handler = off_the_event_loop(sink)
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.warning("line %d", i)
        deadline = time.monotonic() + 10
        while len(writers) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]
    assert threading.main_thread().name not in writers


def test_queued_lines_are_flushed_at_exit() -> None:
    code = (
        "import logging, sys\n"
        "from serving.worker import off_the_event_loop\n"
        "h = logging.StreamHandler(sys.stdout)\n"
        "log = logging.getLogger('x'); log.addHandler(off_the_event_loop(h)); log.propagate = False\n"
        "for i in range(500): log.warning('line %d', i)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.splitlines() == [f"line {i}" for i in range(500)]
