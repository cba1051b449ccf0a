"""SIGTERM to ``fedguard coordinator start`` and ``fedguard client start`` during a run leaves nothing behind.

Both services run as real processes (``python -m fedguard.cli``), with
``TMPDIR`` pointed at a folder of the test's own. A run is launched with one
site where it needs three, so its ServerApp is up and waiting for the others
(under the SuperExec, which Flower starts in a session of its own), and
the site's SuperNode, warm executor and forwarder are up too. Each service
is stopped with SIGTERM; afterwards no process whose command line or
environment names the test's folder is left, and ``TMPDIR`` is empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.runs.control import is_serverapp, serverapp
from tests.integration.deployment import Federation, prepare_sites

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _schema(data: Path) -> Path:
    """The site's schema file for the prepared split (every feature a float)."""
    spec = json.loads((data / "schema.json").read_text())
    lines = [f'label = "{spec["target"]}"', f"label-values = {json.dumps(spec['labels'])}", "[columns]"]
    lines += [f'"{name}" = {{ type = "float" }}' for name in spec["features"]]
    path = data / "schema.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fedguard(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedguard.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _mentions(root: Path) -> list[str]:
    """Living processes (not this one) whose command line or environment names ``root``."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2:].startswith("Z"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _until(condition: object, what: str, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs.glob("*.out"))
            raise AssertionError(f"{what} not reached within {timeout:.0f} s\n{text}")
        time.sleep(0.2)


def test_sigterm_to_each_service_during_a_run_leaves_no_process_or_file(tmp_path: Path) -> None:
    root = tmp_path / "shutdown"
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    data = prepare_sites(root, 1)
    fed = Federation(root, 1)
    bundle = root / "bundles" / "site-0.bundle"
    fed.enroll("site-0")
    env = {**fed._env(fed.layout.root / "flwr", fed.home), "TMPDIR": str(tmp)}
    site_env = {**fed._env(root / "flwr-site-0", fed.site_home(0)), "TMPDIR": str(tmp)}
    (root / "flwr-site-0").mkdir()
    coordinator = _fedguard(["coordinator", "start"], env, root / "coordinator.out")
    site = _fedguard(["client", "start", "--bundle", str(bundle), "--data", str(data / "site-0.csv"),
                      "--schema", str(_schema(data))], site_env, root / "site.out")
    try:
        def online() -> bool:
            assert coordinator.poll() is None and site.poll() is None, "a service exited"
            try:
                return fed.nodes().get("site-0") == "online"
            except Exception:  # noqa: BLE001 - the SuperLink is not up yet
                return False

        _until(online, "site-0 online", 180, root)
        job = root / "job.toml"  # three sites needed, one connected: the ServerApp waits for the others
        job.write_text(f'num-server-rounds = 1\nnum-sites = 3\ndata-dir = "{data}"\nround-timeout = 600.0\n'
                       'watermark = "none"\n')
        cli_env = {**fed.client_env(), "TMPDIR": str(tmp)}
        launched = subprocess.run([sys.executable, "-m", "fedguard.cli", "run", "launch", str(job), "--no-follow",
                                   "--json"], env=cli_env, capture_output=True, text=True, timeout=180, check=False)
        assert launched.returncode == 0, launched.stdout + launched.stderr
        reply = json.loads(launched.stdout.strip().splitlines()[-1])
        runs = fed.home / "runs"

        def serving() -> bool:
            recorded = serverapp(runs, reply["run_id"])
            return recorded is not None and recorded[1] == int(reply["flower_run"]) and is_serverapp(recorded[0])

        _until(serving, "the run's ServerApp up", 120, root)
        status = subprocess.run([sys.executable, "-m", "fedguard.cli", "run", "status", reply["run_id"], "--json"],
                                env=cli_env, capture_output=True, text=True, timeout=120, check=False)
        assert json.loads(status.stdout)["state"] == "running", status.stdout + status.stderr
        assert any("flower-superexec" in p for p in _mentions(root))  # what SIGTERM used to leave running
    finally:
        for service in (site, coordinator):
            service.send_signal(signal.SIGTERM)
        codes = [service.wait(60) for service in (site, coordinator)]
    assert codes == [0, 0], (root / "coordinator.out").read_text()[-3000:] + (root / "site.out").read_text()[-3000:]
    _until(lambda: not _mentions(root), "no process of the federation left", 15, root)
    assert sorted(p.name for p in tmp.iterdir()) == []
