"""Ray's own processes for one fedguard home: where they live, and stopping those a dead run left behind.

``fedguard simulate`` is the driver of a local Ray instance. Killed with
SIGKILL, it cannot shut Ray down, and the instance lives on: ``gcs_server``,
``raylet``, the ``DashboardAgent`` and ``RuntimeEnvAgent`` (and the monitors)
keep their memory and ports until someone stops them by hand.

Every Ray process names its *session directory* on its command line
(``<RAY_TMPDIR>/ray/session_<date>_<time>_<micros>_<driver pid>``), so the
processes of one instance, and the driver that started it, can be told apart
exactly. :func:`orphaned_ray_processes` finds the processes that belong to
*this* home's Ray temp dir (:func:`ray_tmpdir`), run as this user, and whose
driver is gone; nothing else is touched — not another home's Ray, not a Ray
whose driver is still running, not another user's. ``fedguard simulate``
stops them before it starts Ray, and ``fedguard doctor ray`` on request.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import StateError
from simulations import logger

_SESSION = re.compile(r"/ray/(session_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)_\d+_(\d+))(?=[/\s]|$)")
_NAMES = re.compile(r"(gcs_server|raylet|dashboard/agent\.py|runtime_env/agent/main\.py|dashboard/dashboard\.py|"
                    r"log_monitor\.py|monitor\.py|default_worker\.py)")
_LABELS = {"dashboard/agent.py": "DashboardAgent", "runtime_env/agent/main.py": "RuntimeEnvAgent",
           "dashboard/dashboard.py": "dashboard", "default_worker.py": "worker"}


@dataclass(frozen=True)
class RayProcess:
    """One process of a local Ray instance: its pid, what it is, and the session (and driver) it belongs to."""

    pid: int
    name: str
    session: str
    driver_pid: int


def ray_tmpdir(home_root: Path) -> Path:
    """The Ray temp dir of the home at ``home_root``: ``$TMPDIR/fedguard-ray-<uid>-<hash of the home's path>``.

    Not under ``FEDGUARD_HOME`` itself: Ray puts UNIX sockets under it, whose
    paths must stay under 108 bytes, and a home's path can be long. The hash
    binds the directory to one home, so cleaning up after one home never
    touches another's Ray; the uid keeps users apart on a shared ``/tmp``.
    ``RAY_TMPDIR`` in the environment wins (the caller then owns the choice).
    """
    if os.environ.get("RAY_TMPDIR"):
        return Path(os.environ["RAY_TMPDIR"])
    digest = hashlib.sha256(str(home_root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fedguard-ray-{os.getuid()}-{digest}"


def prepare_ray_tmpdir(path: Path) -> Path:
    """Create the temp dir (0700) and refuse one that another user owns (a planted dir on a shared /tmp)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise StateError(f"Ray temp dir '{path}' belongs to another user; remove it, or set RAY_TMPDIR "
                         "to a directory of yours")
    return path


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks after boot
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _driver_alive(driver_pid: int, session_started: str) -> bool:
    """The session's driver still runs: that pid exists, is ours, and started before the session did."""
    try:
        if os.stat(f"/proc/{driver_pid}").st_uid != os.getuid():
            return False
    except OSError:
        return False
    started = _start_time(driver_pid)
    session = time.mktime(time.strptime(session_started, "%Y-%m-%d_%H-%M-%S"))
    return started is not None and started <= session + 1  # a recycled pid started later


def _open_paths(pid: int) -> str:
    """The paths ``pid`` holds open, space-separated (its log files name its session)."""
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ""
    paths = []
    for entry in entries:
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{entry}"))
        except OSError:
            continue
    return " ".join(paths)


def _session_in(text: str, roots: Iterable[str]) -> re.Match[str] | None:
    for root in roots:
        start = text.find(root + "/ray/session_")
        if start >= 0:
            match = _SESSION.match(text, start + len(root))
            if match is not None:
                return match
    return None


def _label(cmdline: str) -> str:
    if cmdline.startswith("ray::"):  # Ray renames its agents and workers: ray::DashboardAgent, ray::IDLE
        return cmdline.split(" ", 1)[0].removeprefix("ray::")
    kind = _NAMES.search(cmdline)
    return _LABELS.get(kind.group(1), kind.group(1)) if kind else cmdline.split(" ", 1)[0].rsplit("/", 1)[-1]


def ray_processes(tmpdir: Path, pids: Iterable[int] | None = None) -> list[RayProcess]:
    """The current user's processes of any Ray session under ``tmpdir``.

    A process belongs to a session when its command line names the session
    directory (``gcs_server``, ``raylet``, the monitors) or, for the processes
    Ray renames (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, workers),
    when such a renamed process holds a file of that directory open (its
    logs). Any other process holding a Ray log open is not Ray's.
    """
    roots = sorted({str(tmpdir), str(tmpdir.resolve())})
    found = []
    for pid in pids if pids is not None else (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        cmdline = _cmdline(pid)
        if not cmdline:  # a zombie, or gone already
            continue
        session = _session_in(cmdline, roots)
        if session is None and cmdline.startswith("ray::"):  # never a `tail -f` of a Ray log, nor the driver
            session = _session_in(_open_paths(pid), roots)
        if session is not None:
            found.append(RayProcess(pid, _label(cmdline), session.group(1), int(session.group(3))))
    return found


def orphaned_ray_processes(tmpdir: Path) -> list[RayProcess]:
    """The processes of Ray sessions under ``tmpdir`` whose driver (the fedguard process) is gone."""
    alive: dict[str, bool] = {}
    orphans = []
    for process in ray_processes(tmpdir):
        if process.session not in alive:
            started = process.session.split("_", 1)[1].rsplit("_", 2)[0]
            alive[process.session] = _driver_alive(process.driver_pid, started)
        if not alive[process.session]:
            orphans.append(process)
    return orphans


def stop_orphaned_ray(tmpdir: Path, *, grace: float = 10.0,
                      clock: Callable[[], float] = time.monotonic) -> list[RayProcess]:
    """SIGTERM every orphaned Ray process of ``tmpdir``, SIGKILL those still there after ``grace`` s.

    Returns what was stopped. Waits for the processes to exit (polling
    ``/proc``), never longer than ``grace`` before escalating.
    """
    orphans = orphaned_ray_processes(tmpdir)
    for process in orphans:
        _signal(process.pid, signal.SIGTERM)
    deadline = clock() + grace
    remaining = [p for p in orphans if _exists(p.pid)]
    while remaining and clock() < deadline:
        time.sleep(0.05)  # polling for the processes' exit, bounded by the deadline
        remaining = [p for p in remaining if _exists(p.pid)]
    for process in remaining:
        _signal(process.pid, signal.SIGKILL)
    for process in orphans:
        logger.warning("stopped orphaned Ray %s (pid %d) of session %s: its driver (pid %d) is gone",
                       process.name, process.pid, process.session, process.driver_pid)
    return orphans


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
