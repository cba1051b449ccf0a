"""Process-wide settings of the serving worker: a frozen start-up heap, an access log written off the loop."""

from __future__ import annotations

import gc
import io
import logging
import subprocess
import sys
import threading
import time

import pytest

from serving.worker import AccessFormatter, BatchedLineWriter, settle_heap


def test_settle_heap_freezes_what_start_up_left_alive() -> None:
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


class _Recording(io.StringIO):
    """A stream that notes which thread wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[str] = []

    def write(self, text: str) -> int:
        self.writers.append(threading.current_thread().name)
        return super().write(text)


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_lines_are_written_in_batches_by_another_thread_in_order() -> None:
    stream = _Recording()
    writer = BatchedLineWriter(stream, interval=0.02)
    logger = _logger("fedguard.test.worker", writer)
    try:
        for i in range(100):
            logger.warning("line %d", i)
        deadline = time.monotonic() + 10
        while stream.getvalue().count("\n") < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        logger.removeHandler(writer)
        writer.close()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]
    assert stream.writers and threading.main_thread().name not in stream.writers
    assert len(stream.writers) < 100  # batched: fewer writes than lines


def test_a_stream_that_does_not_keep_up_costs_lines_not_memory() -> None:
    stream = io.StringIO()
    writer = BatchedLineWriter(stream, interval=3600, max_pending=10)  # the thread never gets to write
    logger = _logger("fedguard.test.worker.full", writer)
    try:
        for i in range(25):
            logger.warning("line %d", i)
        assert len(writer._pending) == 10
        writer.flush()
    finally:
        logger.removeHandler(writer)
        writer.close()
    lines = stream.getvalue().splitlines()
    assert lines[:10] == [f"line {i}" for i in range(10)]
    assert lines[10] == "fedguard: 15 log line(s) dropped: the log stream did not keep up"


def test_a_closed_writer_still_writes() -> None:
    """logging.config.dictConfig closes every handler it finds; lines logged after that are not held back."""
    stream = io.StringIO()
    writer = BatchedLineWriter(stream)
    logger = _logger("fedguard.test.worker.closed", writer)
    writer.close()
    try:
        logger.warning("after close")
    finally:
        logger.removeHandler(writer)
    assert stream.getvalue() == "after close\n"


def test_pending_lines_are_flushed_at_exit() -> None:
    code = (
        "import logging, sys\n"
        "from serving.worker import BatchedLineWriter\n"
        "log = logging.getLogger('x'); log.addHandler(BatchedLineWriter(sys.stdout, interval=60))\n"
        "log.propagate = False\n"
        "for i in range(500): log.warning('line %d', i)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.splitlines() == [f"line {i}" for i in range(500)]


@pytest.mark.parametrize("enabled", [True, False])
def test_serve_log_config_writes_the_access_log_through_uvicorns_dict_config(enabled: bool) -> None:
    """`fedguard serve` hands its access log to uvicorn, whose dictConfig would close a handler set up before."""
    code = (
        "import logging, logging.config, sys\n"
        "from serving.cli import log_config\n"
        "from serving.settings import ServingSettings\n"
        "logging.basicConfig(level=logging.WARNING)  # as fedguard's main() does\n"
        f"logging.config.dictConfig(log_config(ServingSettings(access_log={enabled})))\n"
        "access = logging.getLogger('fedguard.serving.access')\n"
        "for i in range(3): access.info('POST /v1/models/{name}/predict 200 0.4ms key=%d', i)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if "fedguard.serving.access" in line]
    if enabled:
        assert [line.split(" fedguard.serving.access ")[1] for line in lines] == [
            f"POST /v1/models/{{name}}/predict 200 0.4ms key={i}" for i in range(3)]
    else:
        assert lines == []


def test_the_access_formatter_writes_what_the_default_formatter_writes() -> None:
    fmt = "%(asctime)s %(name)s %(message)s"
    plain, cached = logging.Formatter(fmt), AccessFormatter(fmt)
    for i in range(3000):  # 4.1 s in steps of 1.37 ms: many lines per second, and every second boundary
        record = logging.LogRecord("fedguard.serving.access", logging.INFO, __file__, 1, "POST %s %d", ("/x", i), None)
        record.created = 1_700_000_000 + i * 0.00137
        record.msecs = float(int((record.created - int(record.created)) * 1000))
        assert cached.format(record) == plain.format(record)
    record.created += 86_400.5  # a day later: the cached second is not reused
    assert cached.format(record) == plain.format(record)
    assert cached.formatTime(record, "%H") == plain.formatTime(record, "%H")


_RECORDED = """
import logging, logging.config, sys
from serving.cli import log_config
from serving.metrics import RequestRecorder, ServingMetrics, access_logger
from serving.settings import ServingSettings
logging.config.dictConfig(log_config(ServingSettings(access_log=True)))
made = []
build = access_logger.makeRecord
access_logger.makeRecord = lambda *a, **k: (made.append(1), build(*a, **k))[1]
recorder = RequestRecorder(ServingMetrics(), {"demo"})
recorder.record("POST", "/v1/models/{name}/predict", "demo", 200, 0.00042, "k1")  # the direct line
print("records", len(made), flush=True)
access_logger.addFilter(lambda record: True)  # another configuration: through logging again
recorder.record("POST", "/v1/models/{name}/predict", "demo", 429, 0.0031, "k2")
print("records", len(made), flush=True)
logging.shutdown()
"""


def test_the_direct_access_line_is_the_line_logging_writes_and_any_other_configuration_gets_records() -> None:
    import re

    done = subprocess.run([sys.executable, "-c", _RECORDED], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["records", "0", "records", "1"]
    lines = [line for line in done.stderr.splitlines() if "fedguard.serving.access" in line]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} fedguard\.serving\.access POST /v1/models/{{name}}/predict 200 0\.4ms key=k1",
                        lines[0]), lines
    assert re.fullmatch(rf"{stamp} fedguard\.serving\.access POST /v1/models/{{name}}/predict 429 3\.1ms key=k2",
                        lines[1]), lines
    assert len(lines) == 2


def test_the_access_formatters_line_is_its_format_of_a_record() -> None:
    formatter = AccessFormatter("%(asctime)s %(name)s %(message)s")
    for i in range(3000):  # many lines per second, and every second boundary
        created = 1_700_000_000 + i * 0.00137
        record = logging.LogRecord("fedguard.serving.access", logging.INFO, __file__, 1, "POST %s %d", ("/x", i), None)
        record.created = created
        record.msecs = float(int((created - int(created)) * 1000))
        assert formatter.line("fedguard.serving.access", f"POST /x {i}", created) == formatter.format(record)
    assert AccessFormatter("%(levelname)s %(message)s").line("n", "m", 0.0) is None
