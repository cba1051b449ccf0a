"""Helpers for tests that drive the real ``fedguard`` command in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.served import wait_served

FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))


"""The line uvicorn logs once its socket listens, with the port the kernel gave it for ``--port 0``."""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return env


def run_cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``fedguard ARGS`` with its own FEDGUARD_HOME; never raises on a non-zero exit."""
    return subprocess.run([FEDGUARD, *args], env=_env(home), capture_output=True, text=True, timeout=timeout,
                          check=False)


def serve(home: Path, log: Path, timeout: float = 300) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``fedguard serve`` on a port the kernel picks; return the process and its base URL once healthy.

    ``--port 0`` and the URL uvicorn logs, rather than a port picked before
    the server binds it (another process may take it in between). Output
    goes to ``log`` (a file, not a pipe nobody drains while the server
    runs). The deadline only bounds a hang: each step waits for its event
    (the listening line, then ``/healthz`` answering 200).
    """
    with open(log, "wb") as out:
        process = subprocess.Popen([FEDGUARD, "serve", "--host", "127.0.0.1", "--port", "0"], env=_env(home),
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, wait_served(process, log, timeout)


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    return tmp_path / "home"
