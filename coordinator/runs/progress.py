"""Run progress as JSON lines: the ServerApp appends events, the CLI follows them.

One event per line (``{"event": "round", "round": 2, "sites": 3, ...}``),
flushed and fsynced as written, so a follower on the same machine sees every
completed round even if the coordinator is killed right after. The file
holds metadata only (counts, ε, accuracy, site names): never an update.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

PROGRESS = "progress.jsonl"
TERMINAL = ("done", "failed", "stopped")
"""Events after which a run's Flower run is over: published, failed, or stopped by ``fedguard run stop``."""
HISTORY = ("failed", "stopped")
"""Terminal events that an earlier Flower run of the same run may have written (a resume continues after them)."""


class ProgressLog:
    """Append-only JSON-lines event log of one run (an ``Observer`` for the ServerApp)."""

    def __init__(self, path: Path, *, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self._now = now
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: str, payload: Mapping[str, Any]) -> None:
        line = json.dumps({"event": event, "time": self._now(), **payload}, default=str)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every complete event written so far (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def size(path: Path) -> int:
    """Where a follower should start to see only events written from now on."""
    return path.stat().st_size if path.exists() else 0


def from_other_flower_run(event: Mapping[str, Any], flower_run: int | None) -> bool:
    """Whether ``event`` is a failure or stop of another Flower run than ``flower_run`` (the current one).

    A resume stops the run's earlier Flower run, whose ServerApp may still
    report its own failure into the same log, and a stopped run may be
    resumed: that failure or stop is history, not the state of the run.
    Unknown (``None``) on either side counts as current.
    """
    return (flower_run is not None and event.get("event") in HISTORY
            and event.get("flower_run") not in (None, flower_run))


def follow(path: Path, *, stop: Callable[[], bool], offset: int = 0, poll: float = 0.2,
           sleep: Callable[[float], None] = time.sleep, flower_run: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield events appended to ``path`` after byte ``offset`` until a terminal event or ``stop()``.

    With ``flower_run``, a failure or stop of another Flower run is skipped
    (:func:`from_other_flower_run`).
    """
    buffer = ""
    while True:
        if path.exists():
            with path.open("r", encoding="utf-8") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset = handle.tell()
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if from_other_flower_run(event, flower_run):
                    continue
                yield event
                if event.get("event") in TERMINAL:
                    return
        if stop():
            return
        sleep(poll)
