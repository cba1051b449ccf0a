"""A ``fedguard simulate`` killed with SIGKILL leaves Ray running; ``fedguard doctor ray`` stops exactly that."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from simulations.ray_processes import _driver_alive, orphaned_ray_processes, ray_processes, ray_tmpdir
from tests.e2e.conftest import FEDGUARD


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_") and k != "RAY_TMPDIR"}
    env.update(FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return env


def test_a_running_driver_keeps_its_session_and_a_dead_one_does_not() -> None:
    now = time.strftime("%Y-%m-%d_%H-%M-%S")
    assert _driver_alive(os.getpid(), now)
    assert not _driver_alive(os.getpid(), "2000-01-01_00-00-00")  # this pid started after: a recycled pid
    child = subprocess.Popen(["true"])
    child.wait()
    assert not _driver_alive(child.pid, now)


@pytest.mark.slow
def test_doctor_stops_the_ray_a_killed_simulation_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    tmpdir = ray_tmpdir(home)
    simulate = subprocess.Popen(
        [FEDGUARD, "simulate", "--sites", "3", "--rounds", "50", "--watermark", "none", "--dp-epsilon", "0"],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert simulate.stdout is not None
        seen = []
        for line in simulate.stdout:  # Ray is up once the first round has been reported
            seen.append(line)
            if line.startswith("round 1/"):
                break
        else:
            pytest.fail("simulate ended before its first round:\n" + "".join(seen))
        simulate.send_signal(signal.SIGKILL)
        simulate.wait(timeout=60)
    finally:
        if simulate.poll() is None:
            simulate.kill()
            simulate.wait()
    try:
        orphans = orphaned_ray_processes(tmpdir)
        names = {p.name for p in orphans}
        # gcs_server and raylet die with their driver here; the agents Ray renamed outlive it (and hold
        # the DashboardAgent's fixed port) until their own GCS timeout, a minute or more later
        assert {"DashboardAgent", "RuntimeEnvAgent"} <= names, orphans
        assert {p.driver_pid for p in orphans} == {simulate.pid}
        agents = {p.pid for p in orphans if p.name.endswith("Agent")}  # workers may exit on their own meanwhile

        listed = subprocess.run([FEDGUARD, "doctor", "ray", "--dry-run", "--json"], env=_env(home),
                                capture_output=True, text=True, timeout=120, check=True)
        assert {p["pid"] for p in json.loads(listed.stdout)["processes"]} >= agents
        assert ray_processes(tmpdir), "a dry run stops nothing"

        done = subprocess.run([FEDGUARD, "doctor", "ray", "--json"], env=_env(home),
                              capture_output=True, text=True, timeout=120, check=True)
        report = json.loads(done.stdout)
        assert report["stopped"] and report["ray_tmpdir"] == str(tmpdir)
        assert {p["pid"] for p in report["processes"]} >= agents
        assert ray_processes(tmpdir) == []
        again = subprocess.run([FEDGUARD, "doctor", "ray"], env=_env(home), capture_output=True, text=True,
                               timeout=120, check=True)
        assert "no orphaned Ray process" in again.stdout
    finally:
        for process in ray_processes(tmpdir):  # only this test's own Ray, should an assertion fail
            os.kill(process.pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)
