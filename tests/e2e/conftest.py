"""Helpers for tests that drive the real ``fedguard`` command in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FEDGUARD = shutil.which("fedguard") or str(Path(sys.executable).with_name("fedguard"))


def run_cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``fedguard ARGS`` with its own FEDGUARD_HOME; never raises on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return subprocess.run([FEDGUARD, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    return tmp_path / "home"
