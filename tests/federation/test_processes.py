"""Stopping a process tree whose members left its session (as Flower's SuperExec and ServerApp do)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from federation.processes import descendants, process_table, stop_process_group

# A leader in its own session that starts a detached child (a session of its own, like flower-superexec),
# which starts a grandchild in that child's session (like flwr-serverapp); each writes its pid when up.
TREE = """
import os, subprocess, sys, time
out = sys.argv[1]
if len(sys.argv) == 2:
    subprocess.Popen([sys.executable, __file__, out, "child"], start_new_session=True)
elif sys.argv[2] == "child":
    subprocess.Popen([sys.executable, __file__, out, "grandchild"])
with open(os.path.join(out, f"{os.getpid()}.pid"), "w") as f:
    f.write(sys.argv[-1])
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    entry = process_table().get(pid)
    return entry is not None and entry.state != "Z"


def test_stop_reaches_children_in_their_own_sessions_and_leaves_none(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    leader = subprocess.Popen([sys.executable, str(script), str(tmp_path)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 3:  # all three are up
            assert time.monotonic() < deadline, "the process tree did not start"
            time.sleep(0.05)
        pids = {int(p.stem) for p in tmp_path.glob("*.pid")}
        assert pids - {leader.pid} <= descendants(leader.pid, process_table())
        sessions = {process_table()[p].sid for p in pids}
        assert len(sessions) == 2 and os.getsid(0) not in sessions
        stop_process_group(leader, timeout=10)
        assert leader.returncode is not None
        deadline = time.monotonic() + 10  # orphans are reaped by init: wait for that, not a fixed time
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)]
    finally:
        if leader.poll() is None:
            leader.kill()


def test_stop_of_a_process_that_already_exited_is_a_no_op() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait()
    stop_process_group(done)
    stop_process_group(None)
