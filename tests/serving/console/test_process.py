"""``fedguard console`` and ``fedguard serve`` as real processes: the console answers, and a replica stays light.

A serving replica imports no training code (``tests/serving/test_process_imports.py``);
its console must not change that, even after every page was opened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lifecycle.registry import Registry, VersionRecord
from serving.guards.keys import create_key
from tests.served import wait_served
from tests.serving.console.fixtures import charge_sites, write_run
from tests.serving.test_process_imports import FORBIDDEN, ROOT, _env

pytestmark = pytest.mark.integration
PAGES = ("runs", "privacy", "models", "models/demo", "consent", "audit", "sites")
RUN = """
import atexit, json, runpy, signal, sys
dump = sys.argv[1]
atexit.register(lambda: open(dump, "w").write(json.dumps(sorted(sys.modules))))
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
sys.argv = ["fedguard", sys.argv[2], "--host", "127.0.0.1", "--port", "0"]
runpy.run_module("fedguard.cli", run_name="__main__")
"""


def _visit(url: str, key: str) -> dict[str, int]:
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as client:
        signed = client.post("/console/signin", data={"api_key": key}, headers={"Origin": url})
        assert signed.status_code == 200, signed.text[-500:]
        return {page: client.get(f"/console/{page}").status_code for page in PAGES}


def _run(command: str, home: Path, tmp_path: Path, key: str) -> tuple[dict[str, int], list[str], str]:
    dump, log = tmp_path / f"{command}.json", tmp_path / f"{command}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", RUN, str(dump), command], env=_env(home), cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_served(process, log, timeout=120)
        statuses = _visit(url, key)
        page = httpx.Client(base_url=url, follow_redirects=True)
        page.post("/console/signin", data={"api_key": key}, headers={"Origin": url})
        runs = page.get("/console/runs").text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return statuses, json.loads(dump.read_text()), runs


def test_fedguard_console_serves_every_page(registry: Registry, published: VersionRecord, fedguard_home: Path,
                                            tmp_path: Path) -> None:
    write_run(registry, "sim-20261205-a", 2, done=published.ref)
    charge_sites(registry, "sim-20261205-a")
    key = create_key(registry, "viewer", "compliance", actor="test").key
    statuses, _, runs = _run("console", fedguard_home, tmp_path, key)
    assert statuses == dict.fromkeys(PAGES, 200)
    assert "sim-20261205-a" in runs


def test_the_serving_console_imports_no_training_code(registry: Registry, published: VersionRecord,
                                                      fedguard_home: Path, tmp_path: Path) -> None:
    write_run(registry, "sim-20261205-a", 2, done=published.ref)
    charge_sites(registry, "sim-20261205-a")
    key = create_key(registry, "admin", "ops", actor="test").key
    statuses, modules, runs = _run("serve", fedguard_home, tmp_path, key)
    assert statuses == dict.fromkeys(PAGES, 200)
    assert 'id="unavailable"' in runs  # runs live on the coordinator's console
    assert sorted(m for m in modules if m.split(".")[0] in FORBIDDEN) == []
