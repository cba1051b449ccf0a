"""Waiting for a real ``fedguard serve`` process: the URL uvicorn logs, then ``/healthz`` answering 200."""

from __future__ import annotations

import re
import ssl
import subprocess
import time
from pathlib import Path

import httpx

LISTENING = re.compile(r"Uvicorn running on (https?://[^\s]+)")


def wait_served(process: subprocess.Popen[bytes], log: Path, timeout: float,
                verify: ssl.SSLContext | bool = True) -> str:
    """The base URL of ``process`` once it answers ``/healthz``; its log's tail if it exits or ``timeout`` passes.

    ``--port 0`` and the logged URL rather than a port picked beforehand (another
    process may take it in between); the deadline only bounds a hang: each step
    waits for its event. A process still running at the deadline is killed. ``verify`` is for a
    server with TLS (an :class:`ssl.SSLContext` trusting its certificate).
    """
    deadline = time.monotonic() + timeout
    url = None
    while True:
        if process.poll() is not None:
            raise AssertionError(f"fedguard serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"fedguard serve not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        if url is None and (found := LISTENING.search(log.read_text(errors="replace"))):
            url = found.group(1)
        if url is not None:
            try:
                if httpx.get(f"{url}/healthz", timeout=5, verify=verify).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
