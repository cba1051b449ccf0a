"""The sweep's bookkeeping as trials end: each record written, the table rewritten, the progress bar moved.

:class:`SweepProgress` is driven by Ray Tune's callbacks on the driver, so
records are written where ``--out`` is, even when trials ran on other nodes
of a cluster (each trial sends its record back as its one reported result).
A trial that Tune itself saw fail (its worker died) is recorded as failed
with the last line of Tune's error file.

Imported only to run a sweep (it imports ``ray.tune``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from simulations.experiments.records import make_record, read_records, write_record, write_table
from simulations.experiments.trial import last_line


class SweepProgress:
    """Counts trials done, running, failed and not applicable; writes each record and the table."""

    def __init__(self, out: Path, total: int, already: Counter[str], console: Console,
                 settings: Mapping[str, Mapping[str, Any]]) -> None:
        self.out = out
        self.settings = settings
        self.counts: Counter[str] = Counter(already)
        self.running = 0
        self.progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console)
        self.task: TaskID = self.progress.add_task("trials", total=total, completed=sum(already.values()),
                                                   state=self._state())

    def _state(self) -> str:
        return (f"{self.running} running · {self.counts['failed']} failed · "
                f"{self.counts['not-applicable']} not applicable")

    def _refresh(self, advance: int = 0) -> None:
        self.progress.update(self.task, advance=advance, state=self._state())

    def started(self) -> None:
        """A trial started."""
        self.running += 1
        self._refresh()

    def recorded(self, record: Mapping[str, Any]) -> None:
        """A trial ended with ``record``: write it, rewrite the table, count it."""
        write_record(self.out, record)
        write_table(self.out, read_records(self.out))
        self.counts[str(record["status"])] += 1
        self.running = max(0, self.running - 1)
        self._refresh(advance=1)

    def crashed(self, trial: str, error_file: str | None) -> None:
        """Tune saw the trial's worker fail before it reported: record it as failed."""
        text = Path(error_file).read_text(encoding="utf-8", errors="replace") if error_file and \
            Path(error_file).exists() else "the trial's Ray worker failed"
        self.recorded(make_record(trial, self.settings.get(trial, {}), "failed", error=last_line(text)))


_ACTIVE: dict[str, SweepProgress] = {}
"""The sweeps this driver runs, by id: Tune pickles its callbacks with the experiment state, so the
callback holds only this key, never the progress bar (a lock) itself."""


class TuneCallback(Callback):
    """Ray Tune's callbacks on the driver, forwarded to the :class:`SweepProgress` registered under ``key``."""

    def __init__(self, progress: SweepProgress) -> None:
        self.key = str(id(progress))
        _ACTIVE[self.key] = progress

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _ACTIVE[self.key].started()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "record" in result:
            _ACTIVE[self.key].recorded(json.loads(result["record"]))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _ACTIVE[self.key].crashed(str(trial.config["trial"]["id"]), getattr(trial, "error_file", None))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        _ACTIVE.pop(self.key, None)
