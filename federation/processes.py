"""Stopping the Flower processes fedguard starts (SuperLink, SuperNode) and everything they spawned.

Each launcher starts its process in a new session, so its session holds the
children Flower forks in it (the site's warm executor and ClientApp
processes). Flower also starts children in sessions of their own: the
SuperLink starts ``flower-superexec`` detached (``start_new_session``), and
the SuperExec's ``flwr-serverapp`` processes live in the SuperExec's
session. A SIGTERM to the launcher's process group alone left those two
running, re-parented to PID 1. :func:`stop_process_group` therefore stops
the whole tree: it notes the session of every descendant before signalling
(a session id survives re-parenting), sends SIGTERM to each of their process
groups, waits up to the timeout for every member of those sessions to exit,
and SIGKILLs whichever has not. One helper, so the coordinator's and the
site's launchers stop processes the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessEntry:
    """One row of the process table: parent, process group, session, state (``Z`` for a zombie)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str


def process_table(proc: Path = PROC) -> dict[int, ProcessEntry]:
    """Every process in ``/proc`` (empty where there is no ``/proc``); processes that vanish are skipped."""
    table: dict[int, ProcessEntry] = {}
    for entry in proc.glob("[0-9]*"):
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces and parentheses
        try:
            table[int(entry.name)] = ProcessEntry(int(entry.name), int(fields[1]), int(fields[2]), int(fields[3]),
                                                  fields[0])
        except (IndexError, ValueError):
            continue
    return table


def descendants(pid: int, table: dict[int, ProcessEntry]) -> set[int]:
    """The pids of every process below ``pid`` in ``table`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _living(sessions: set[int], table: dict[int, ProcessEntry]) -> list[int]:
    return [e.pid for e in table.values() if e.sid in sessions and e.state != "Z"]


def _signal_groups(groups: Iterable[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def stop_process_group(process: subprocess.Popen[bytes] | None, timeout: float = 10.0, *,
                       table: Callable[[], dict[int, ProcessEntry]] = process_table) -> None:
    """SIGTERM ``process`` and every process it started (their groups), wait up to ``timeout`` s, then SIGKILL.

    The sessions and groups to stop are those of ``process`` and of all its
    descendants at the time of the call, except this process's own. No-op if
    ``process`` has exited and nothing of its sessions is left.
    """
    if process is None:
        return
    own_sessions, own_group = {os.getsid(0)}, os.getpgid(0)
    snapshot = table()
    tree = {process.pid} | descendants(process.pid, snapshot)
    sessions = {snapshot[p].sid for p in tree if p in snapshot} - own_sessions
    groups = {snapshot[p].pgid for p in tree if p in snapshot} - {own_group}
    leader = snapshot.get(process.pid)
    if process.poll() is not None and not _living(sessions, snapshot):
        return
    _signal_groups(groups, signal.SIGTERM)
    if process.poll() is None and (leader is None or leader.pgid == own_group):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # a leader that shares our group, or no /proc: signal it alone
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    while (left := _living(sessions, table())) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # what did not end within the grace period (the leader included)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
