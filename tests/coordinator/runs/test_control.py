"""Run control without a SuperLink: live states, stop requests, the ServerApp's pid, follow and Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console

from coordinator.run_cli import _follow, _status
from coordinator.runs.control import (
    UNREACHABLE,
    end_serverapp,
    is_serverapp,
    live_state,
    record_serverapp,
    running_serverapp,
    serverapp,
    stop_requested,
    terminal_event,
)
from coordinator.runs.job import Job
from coordinator.runs.launch import _record_flower_run
from coordinator.runs.progress import ProgressLog, follow
from lifecycle.errors import RunStoppedError
from lifecycle.home import Home


@pytest.mark.parametrize(("local", "flower", "reachable", "gone", "shown"), [
    ("done", None, False, False, "done"),  # a terminal event of the run's own is the truth
    ("stopped", "running", True, False, "stopped"),
    ("started", "running", True, False, "running"),
    ("started", "running", True, True, "interrupted"),  # the SuperLink says running, nothing runs it
    ("started", "finished:stopped", True, False, "stopped"),
    ("started", "finished:failed", True, False, "interrupted"),  # cut off: a failure of its own is an event
    ("started", "finished:completed", True, False, "failed"),  # ended without publishing
    ("started", None, True, False, "interrupted"),  # the SuperLink no longer knows the Flower run
    ("submitted", "starting", True, False, "submitted"),
    ("started", None, False, False, UNREACHABLE),  # never a guess
])
def test_live_state(local: str, flower: str | None, reachable: bool, gone: bool, shown: str) -> None:
    assert live_state(local, flower, reachable=reachable, serverapp_gone=gone) == shown


def _run(tmp_path: Path, run_id: str = "r1") -> tuple[Home, ProgressLog]:
    home = Home(tmp_path)
    directory = tmp_path / "runs" / run_id
    Job.from_mapping({"num-server-rounds": 3}).with_run_id(run_id).dump(directory / "job.toml")
    return home, ProgressLog(directory / "progress.jsonl")


def test_a_stop_is_terminal_for_its_flower_run_and_history_after_a_resume(tmp_path: Path) -> None:
    home, log = _run(tmp_path)
    _record_flower_run(home, "r1", 11)
    log("round", {"round": 1})
    log("stopped", {"flower_run": 11, "actor": "cli:ops"})
    assert _status(home, "r1")["state"] == "stopped" == terminal_event(home, "r1", 11)
    assert [e["event"] for e in follow(log.path, stop=lambda: True)] == ["round", "stopped"]
    _record_flower_run(home, "r1", 22)  # resumed
    assert _status(home, "r1")["state"] == "started" and terminal_event(home, "r1", 22) is None
    assert [e["event"] for e in follow(log.path, stop=lambda: True, flower_run=22)] == ["round"]


def test_a_follower_ends_with_run_stopped_error(tmp_path: Path) -> None:
    home, log = _run(tmp_path)
    log("stopped", {"flower_run": 11, "actor": "cli:ops"})
    with pytest.raises(RunStoppedError, match="stopped by cli:ops.*fedguard run resume r1") as stopped:
        _follow(home, "r1", 0, 5.0, False, Console(quiet=True), 11)
    assert stopped.value.exit_code == 10


def test_ctrl_c_during_the_follow_says_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = _run(tmp_path)

    def interrupted(*_: object, **__: object) -> object:
        raise KeyboardInterrupt  # what Ctrl-C raises in the follower's wait

    monkeypatch.setattr("coordinator.run_cli.events", interrupted)
    with pytest.raises(typer.Exit) as exit_:
        _follow(home, "r1", 0, None, False, Console(), 11)
    assert exit_.value.exit_code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert ("run r1 goes on at the coordinator; follow it with 'fedguard run status r1', "
            "stop it with 'fedguard run stop r1'") in err


def test_stop_request_names_one_flower_run(tmp_path: Path) -> None:
    (tmp_path / "r1").mkdir()
    assert not stop_requested(tmp_path, "r1", 11)
    (tmp_path / "r1" / "stop-requested.json").write_text('{"flower_run": 11, "actor": "cli:ops"}')
    assert stop_requested(tmp_path, "r1", 11) and not stop_requested(tmp_path, "r1", 22)


def test_end_serverapp_terminates_one_that_outlives_its_stop(tmp_path: Path) -> None:
    # a real process whose command line names a ServerApp, that ignores nothing: SIGTERM ends it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "flwr-serverapp"])
    try:
        record_serverapp(tmp_path, "r1", 11, pid=proc.pid)
        assert serverapp(tmp_path, "r1") == (proc.pid, 11)
        assert is_serverapp(proc.pid)
        assert running_serverapp(tmp_path, "r1", 22) is None  # another Flower run's ServerApp
        assert running_serverapp(tmp_path, "r1", 11) == proc.pid
        assert end_serverapp("r1", proc.pid, grace=0.1) == "terminated"
        proc.wait(5)
        assert not is_serverapp(proc.pid) and running_serverapp(tmp_path, "r1", 11) is None
        assert end_serverapp("r1", proc.pid, grace=0.1) == "ended"  # gone by itself
        assert end_serverapp("r1", None) == "none"
    finally:
        proc.kill()
