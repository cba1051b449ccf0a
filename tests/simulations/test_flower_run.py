"""The documented ``flwr run . local-simulation`` works on a fresh Flower home, installs nothing, stops cleanly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from privacy.he import create_federation_keys
from simulations.federation import SimulationConfig, prepare_data
from simulations.flower_local import local_superlinks
from tests.e2e.conftest import FEDGUARD

ROOT = Path(__file__).resolve().parents[2]
FLWR = str(Path(FEDGUARD).with_name("flwr"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_documented_flwr_run_on_a_fresh_flower_home(tmp_path: Path) -> None:
    flwr_home, home = tmp_path / "flwr", tmp_path / "home"
    data = tmp_path / "data"
    prepare_data(SimulationConfig(sites=2, rounds=1, secure_agg="ckks"), data)
    secret, public = create_federation_keys(tmp_path / "sites", tmp_path / "coordinator")
    ray_tmp = tempfile.mkdtemp(prefix="fg-ray-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDGUARD_", "FLWR_", "RAY_"))}
    env.update(FEDGUARD_HOME=str(home), FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", RAY_TMPDIR=ray_tmp,  # short: Ray's socket paths < 108 bytes
               # flwr's local SuperLink listens on fixed ports unless told otherwise
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
               UV_OFFLINE="1", PIP_NO_INDEX="1")  # an attempt to install anything fails instead of downloading

    config = subprocess.run([FEDGUARD, "flower", "config", "--num-supernodes", "2", "--json"], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    command = json.loads(config.stdout)["command"]
    assert command.startswith("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . local-simulation ")
    assert 'address = ":local:"' in (flwr_home / "config.toml").read_text()

    run_config = (f"data-dir='{data}' num-server-rounds=1 local-epochs=1 watermark='none' "
                  f"secure-aggregation='ckks' he-public-context='{public}' sim-he-secret-context='{secret}' "
                  f"result-path='{tmp_path / 'outcome.json'}'")
    try:
        run = subprocess.run(
            ["bash", "-c", f'{command} --run-config "{run_config} num-sites=2"'], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=900, check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        assert (tmp_path / "outcome.json").is_file(), output[-4000:]
        outcome = json.loads((tmp_path / "outcome.json").read_text())
        assert outcome["model"] == "breast-cancer" and outcome["accuracy"] > 0.5
        assert "uv sync" not in output and "Installing" not in output
        assert not list((flwr_home).glob("**/runtime-env*")), "no per-run environment was created"
        assert local_superlinks(flwr_home), "flwr run leaves its local SuperLink running"

        # 2 SuperNodes against num-sites = 3 waited the whole round-timeout (600 s) in silence: now it fails at once
        started = time.monotonic()
        short = subprocess.run(
            ["bash", "-c", f'{command} --run-config "{run_config} num-sites=3 round-timeout=600.0"'], cwd=ROOT,
            env=env, capture_output=True, text=True, timeout=900, check=False,
        )
        output = short.stdout + short.stderr
        assert "the simulation has 2 SuperNode(s) but the run needs num-sites = 3" in output, output[-4000:]
        assert time.monotonic() - started < 300
    finally:
        stopped = subprocess.run([FEDGUARD, "flower", "stop", "--json"], env=env, capture_output=True, text=True,
                                 timeout=120, check=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert json.loads(stopped.stdout)["stopped"]
    assert local_superlinks(flwr_home) == []

