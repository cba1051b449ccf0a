"""Run control: stopping a run, and the live state of a run from the SuperLink and the process table.

``fedguard run stop RUN`` (:func:`stop_run`) stops the run's current Flower
run through the SuperLink's Control API (``flwr stop``), waits until its
ServerApp process has ended (SIGTERM, then SIGKILL, if it outlives the
grace period), writes the ``run.stopped`` audit event in one registry
transaction, and appends a terminal ``stopped`` event to the run's
``progress.jsonl``, on which a follower exits with
:class:`lifecycle.errors.RunStoppedError`. Before asking Flower, it leaves a
stop request (``stop-requested.json``, naming the Flower run) in the run's
folder: the ServerApp's grid calls fail once its run is stopped, and the
ServerApp then reports no ``failed`` event for a run an operator stopped.

The ServerApp writes ``serverapp.pid`` (its pid and Flower run) when it
starts, so that the coordinator machine can tell a ServerApp that still runs
from one that was killed. :func:`live_state` combines the run's own progress
with the SuperLink's status of its Flower run (``flwr ls``): a run whose
progress says it is under way but whose Flower run was stopped, failed, or
is no longer run by anything is shown as such, and an unreachable
SuperLink as :data:`UNREACHABLE` rather than a guess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator import logger
from coordinator.runs import run_dir
from coordinator.runs.launch import Connection, _flwr, flower_runs, progress_path
from coordinator.runs.progress import TERMINAL, ProgressLog, from_other_flower_run
from lifecycle.errors import ConfigurationError, TrainingError
from lifecycle.home import Home, write_private

if TYPE_CHECKING:  # the registry (SQLModel) is imported only when a stop is audited: 'run status' stays light
    from lifecycle.registry import Registry

STOP_REQUEST = "stop-requested.json"
SERVERAPP_PID = "serverapp.pid"
UNREACHABLE = "unknown (SuperLink not reachable)"
UNDER_WAY = ("submitted", "started")
"""Local states (no terminal event yet) that only the SuperLink can confirm."""

PROC = Path("/proc")


def record_serverapp(runs: Path, run_id: str, flower_run: int | None, pid: int | None = None) -> None:
    """Note the ServerApp process of ``flower_run`` (this process by default) in the run's folder."""
    path = run_dir(runs, run_id) / SERVERAPP_PID
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({"pid": os.getpid() if pid is None else pid, "flower_run": flower_run}).encode())


def serverapp(runs: Path, run_id: str) -> tuple[int, int | None] | None:
    """The (pid, Flower run) of the run's last ServerApp, if one recorded itself."""
    try:
        raw = json.loads((run_dir(runs, run_id) / SERVERAPP_PID).read_text(encoding="utf-8"))
        return int(raw["pid"]), (None if raw.get("flower_run") is None else int(raw["flower_run"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_serverapp(pid: int, proc: Path = PROC) -> bool:
    """Whether ``pid`` is a living (not zombie) ServerApp process: its command line names ``serverapp``."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(")") + 2:].split()[:1]
    return state != ["Z"] and b"serverapp" in cmdline


def stop_requested(runs: Path, run_id: str, flower_run: int | None) -> bool:
    """Whether an operator asked to stop ``flower_run`` of this run (the ServerApp then reports no failure)."""
    try:
        raw = json.loads((run_dir(runs, run_id) / STOP_REQUEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("flower_run") == flower_run


def flower_statuses(home: Home, connection: Connection, *, timeout: float = 60.0) -> dict[int, str] | None:
    """``Flower run id → status`` (``running``, ``finished:stopped`` …) from ``flwr ls``; ``None`` if unreachable."""
    try:
        connection.validate().write(home.root / "flwr")
        status, reply, detail = _flwr(["ls", connection.name], home, timeout)
    except (ConfigurationError, OSError) as exc:
        logger.info("SuperLink status not available: %s", exc)
        return None
    if status != 0 or reply.get("success") is False or "runs" not in reply:
        logger.info("SuperLink at %s did not list its runs: %s", connection.address, detail)
        return None
    out: dict[int, str] = {}
    for row in reply["runs"]:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[int(row["run-id"])] = str(row["status"])
    return out


def live_state(local: str, flower_status: str | None, *, reachable: bool, serverapp_gone: bool) -> str:
    """The state to show for a run: its own terminal event, else what the SuperLink says of its Flower run.

    ``local``: ``submitted``/``started`` (no terminal event yet) or a
    terminal event (``done``, ``failed``, ``stopped``), shown as is.
    ``flower_status``: the SuperLink's status of the current Flower run
    (``None``: the SuperLink does not know it). ``serverapp_gone``: the
    ServerApp that recorded itself for that Flower run no longer runs.
    """
    if local not in UNDER_WAY:
        return local
    if not reachable:
        return UNREACHABLE
    if flower_status is None:
        return "interrupted"  # the SuperLink no longer knows the Flower run (its database was replaced)
    if flower_status.endswith(":stopped"):
        return "stopped"
    if flower_status == "finished:failed":
        # our ServerApp writes a ``failed`` event for any failure of its own (``local`` would be terminal):
        # without one it was cut off (killed, or its SuperLink died under it), and the run resumes
        return "interrupted"
    if flower_status.startswith("finished"):
        return "failed"  # ended without publishing (no ``done`` event)
    if flower_status == "running":
        return "interrupted" if serverapp_gone else "running"
    return local  # pending, starting


@dataclass(frozen=True)
class StopResult:
    """What ``run stop`` did: the Flower run stopped, and how its ServerApp process ended."""

    run_id: str
    flower_run: int | None
    flower_status: str
    serverapp: str
    """``ended`` (by itself once its run was stopped), ``terminated``, ``killed``, or ``none`` (none was running)."""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "state": "stopped", "flower_run": self.flower_run,
                "flower_status": self.flower_status, "serverapp": self.serverapp}


def _wait_gone(pid: int, timeout: float, now: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    deadline = now() + timeout
    while is_serverapp(pid):
        if now() > deadline:
            return False
        sleep(0.1)
    return True


def running_serverapp(runs: Path, run_id: str, flower_run: int | None) -> int | None:
    """The pid of the ServerApp of ``flower_run`` if it recorded itself and still runs."""
    recorded = serverapp(runs, run_id)
    if recorded is None or recorded[1] != flower_run or not is_serverapp(recorded[0]):
        return None
    return recorded[0]


def end_serverapp(run_id: str, pid: int | None, *, grace: float = 30.0,
                  now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Make sure ServerApp ``pid`` (found before its run was stopped) has ended: wait ``grace`` s, SIGTERM, SIGKILL."""
    if pid is None:
        return "none"
    if _wait_gone(pid, grace, now, sleep):
        return "ended"
    for sig, outcome in ((signal.SIGTERM, "terminated"), (signal.SIGKILL, "killed")):
        logger.warning("run %s: ServerApp pid %d still runs after its Flower run was stopped; sending %s",
                       run_id, pid, sig.name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, 10.0, now, sleep):
            return outcome
    raise TrainingError(f"run {run_id}: the ServerApp (pid {pid}) survived SIGKILL; check the coordinator machine")


def stop_run(home: Home, run_id: str, connection: Connection, *, actor: str, registry: Registry,
             grace: float = 30.0, timeout: float = 60.0) -> StopResult:
    """Stop ``run_id``'s current Flower run, end its ServerApp, audit ``run.stopped`` and record ``stopped``.

    Raises :class:`ConfigurationError` for a run that already ended (done,
    failed or stopped), and :class:`TrainingError` if the SuperLink refuses
    to stop a Flower run that it still runs.
    """
    directory = run_dir(home.runs, run_id)
    if not directory.exists():
        raise ConfigurationError(f"no run '{run_id}' in {home.runs}; see 'fedguard run list'")
    segments = flower_runs(home, run_id)
    current = segments[-1] if segments else None
    ended = terminal_event(home, run_id, current)
    if ended is not None:
        raise ConfigurationError(f"run {run_id} already ended ({ended}); nothing to stop"
                                 + ("; 'fedguard run resume' continues it" if ended != "done" else ""))
    write_private(directory / STOP_REQUEST, json.dumps({"flower_run": current, "actor": actor}).encode())
    pid = running_serverapp(home.runs, run_id, current)
    status = "none"
    if current is not None:
        connection.validate().write(home.root / "flwr")
        code, reply, detail = _flwr(["stop", str(current), connection.name], home, timeout)
        statuses = flower_statuses(home, connection, timeout=timeout)
        status = (statuses or {}).get(current, "unknown")
        if (code != 0 or reply.get("success") is False) and not status.startswith("finished"):
            (directory / STOP_REQUEST).unlink(missing_ok=True)
            raise TrainingError(f"the SuperLink at {connection.address} did not stop Flower run {current} of run "
                                f"{run_id}: {detail}; check that the coordinator is started, then try again")
    from lifecycle import audit

    ending = end_serverapp(run_id, pid, grace=grace)
    with registry.transaction() as session:
        audit.record(session, "run.stopped", actor=actor, subject=run_id,
                     details={"flower_run": current, "flower_status": status, "serverapp": ending})
    ProgressLog(progress_path(home, run_id))("stopped", {"flower_run": current, "actor": actor})
    logger.info("run %s stopped by %s (Flower run %s: %s; ServerApp %s)", run_id, actor, current, status, ending)
    return StopResult(run_id, current, status, ending)


def terminal_event(home: Home, run_id: str, current: int | None) -> str | None:
    """The run's terminal event (``done``, ``failed``, ``stopped``) for its current Flower run, if any."""
    events = ProgressLog(progress_path(home, run_id)).events()
    last = next((e for e in reversed(events)
                 if e.get("event") in TERMINAL and not from_other_flower_run(e, current)), None)
    return None if last is None else str(last["event"])
