"""Stopping the Flower processes fedguard starts (SuperLink, SuperNode) and everything they spawned.

Each launcher starts its process in a new session, so the process group holds
the children Flower forks (SuperExec, ClientApp/ServerApp processes): a
SIGTERM to the group lets them all shut down cleanly, and a SIGKILL follows
only if they do not within the timeout. One helper, so the coordinator's and
the site's launchers stop processes the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM ``process``'s group, wait up to ``timeout`` s, then SIGKILL it; no-op if it has exited."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass
