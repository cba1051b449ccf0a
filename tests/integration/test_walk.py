"""The first deployment, walked as docs/deployment.md tells operators to walk it, with the commands they type.

Three hospitals export the breast-cancer data the way hospitals do
(``patient_id``, ``diagnosis`` as M/B, their own column names), each with a
schema that maps its export onto the federation's data contract. The
coordinator declares the contract and builds its held-out reference set
with ``fedguard coordinator data``, enrols the sites and starts; each site
checks its file against the contract with ``fedguard client check
--bundle`` and starts its agent. Then: a run that completes and publishes;
a second run left running by Ctrl-C on its follow, then stopped with
``fedguard run stop``; one site revoked, whose
agent says so and exits 7; a third run waiting for a site that never connected while
every service gets SIGTERM (a fourth site, enrolled, never connected). Afterwards no process of the federation is
left and the temporary directory is empty.

Every command is the real ``fedguard`` command in its own process
(``python -m fedguard.cli``), every service a real process on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings
from tests.federation import hospital
from tests.integration.deployment import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

SITES = ("st-marys", "guys", "kings")
RENAMES: dict[str, dict[str, str]] = {  # contract column → the hospital's own name
    "st-marys": {},
    "guys": {"radius_mean": "Radius (mean)", "area_mean": "AREA_MEAN", "diagnosis": "dx"},
    "kings": {"texture_mean": "texture"},
}
CODES: dict[str, dict[str, str]] = {  # contract label value → the hospital's code
    "st-marys": {"malignant": "M", "benign": "B"},
    "guys": {"malignant": "M", "benign": "B"},
    "kings": {"malignant": "1", "benign": "0"},
}
EXTRA = {"guys": {"admission_date": "2026-11-02"}}
LATE = "queens"
"""Enrolled, never connected: the third run waits for it."""


class Walk:
    """The folders, environments and processes of one walk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"  # TMPDIR of every process: must be empty at the end
        self.tmp.mkdir(parents=True)
        self.logs = root / "logs"
        self.logs.mkdir()
        self.services: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, who: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("FEDGUARD_DATABASE_URL", "FEDGUARD_SUPERLINK", "FEDGUARD_SUPERLINK_CA")}
        home = self.root / who
        env.update(FEDGUARD_HOME=str(home / "fedguard"), FLWR_HOME=str(home / "flwr"), TMPDIR=str(self.tmp),
                   PYTHONPATH=str(REPO), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   COLUMNS="120")
        return env

    def fedguard(self, who: str, *args: str, code: int = 0, timeout: float = 300) -> str:
        """Run one ``fedguard`` command as ``who`` (coordinator or a site); its output, after checking its code."""
        proc = subprocess.run([sys.executable, "-m", "fedguard.cli", *args], env=self.env(who), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == code, (f"fedguard {' '.join(args)} exited {proc.returncode}, not {code}\n"
                                         f"{proc.stdout}\n{proc.stderr}\n{self.tails()}")
        return proc.stdout + proc.stderr

    def start(self, name: str, who: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.out", "ab") as out:
            self.services[name] = subprocess.Popen([sys.executable, "-m", "fedguard.cli", *args], env=self.env(who),
                                                   cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        return self.services[name]

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.out").read_text(errors="replace")

    def tails(self) -> str:
        paths = sorted(self.logs.glob("*.out")) + sorted((self.root / "coordinator").rglob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths)

    def until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout:.0f} s\n{self.tails()}")
            time.sleep(0.2)

    def stop_all(self) -> dict[str, int]:
        for process in self.services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.services.items():
            try:
                codes[name] = process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes



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
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append(f"{entry.name}: {cmdline.decode(errors='replace')[:200]}")
    return found


def _status(walk: Walk, run_id: str) -> dict[str, object]:
    """``fedguard run status RUN --json`` on the coordinator machine."""
    return dict(json.loads(walk.fedguard("coordinator", "run", "status", run_id, "--json")))


def test_the_operators_walk(tmp_path: Path) -> None:
    walk = Walk(tmp_path / "walk")
    root = walk.root
    held, parts = hospital.split(len(SITES))

    # the coordinator: init, the data contract and its reference set, one bundle per site, start
    walk.fedguard("coordinator", "coordinator", "init", "--federation", "cardio", "--host", "localhost",
                  "--gateway-address", "127.0.0.1", "--gateway-port", str(free_port()),
                  "--superlink-port", str(free_port()))
    (root / "contract.toml").write_text(hospital.contract_toml())
    hospital.write_heldout(root / "heldout.csv", held)
    declared = walk.fedguard("coordinator", "coordinator", "data", "--data", "heldout.csv", "--schema",
                             "contract.toml")
    assert "data contract declared: 30 features" in declared
    for name in (*SITES, LATE):
        walk.fedguard("coordinator", "site", "enroll", name, "--out", f"{name}.bundle")
    try:
        walk.start("coordinator", "coordinator", "coordinator", "start")

        # each site: its export, its mapping schema, the offline check against the contract, the agent
        for name, rows in zip(SITES, parts, strict=True):
            export = hospital.write_export(root / f"{name}.csv", rows, rename=RENAMES[name], codes=CODES[name],
                                           extra=EXTRA.get(name))
            ignore = [hospital.RECORD_ID, *EXTRA.get(name, {})]
            (root / f"{name}-schema.toml").write_text(hospital.mapping_toml(rename=RENAMES[name], codes=CODES[name],
                                                                            ignore=ignore))
            checked = walk.fedguard(name, "client", "check", "--bundle", f"{name}.bundle", "--data", export.name,
                                    "--schema", f"{name}-schema.toml")
            assert checked.startswith("ok"), checked
            walk.start(name, name, "client", "start", "--bundle", f"{name}.bundle", "--data", export.name,
                       "--schema", f"{name}-schema.toml", "--max-refused", "2")

        # a run that completes: the job names no data-dir (the reference set of 'coordinator data')
        (root / "job.toml").write_text('model-name = "cardio"\nnum-server-rounds = 2\nnum-sites = 3\n'
                                       'local-epochs = 1\nround-timeout = 300.0\nsite-deadline = 300.0\n')
        launched = walk.fedguard("coordinator", "run", "launch", "job.toml")
        assert "published cardio:1" in launched, launched
        assert "{" not in launched, launched  # progress in words, no raw dicts

        # a second run: Ctrl-C on its follow leaves it running; 'run stop' stops it, once
        (root / "long.toml").write_text((root / "job.toml").read_text().replace("num-server-rounds = 2",
                                                                                "num-server-rounds = 30"))
        follower = subprocess.Popen([sys.executable, "-m", "fedguard.cli", "run", "launch", "long.toml", "--json"],
                                    env={**walk.env("coordinator"), "PYTHONUNBUFFERED": "1"}, cwd=root,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        run_id = json.loads(follower.stdout.readline())["run_id"]
        for line in follower.stdout:  # the follow's events, one JSON object a line
            if json.loads(line).get("event") == "round":
                break
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 130, err
        assert (f"run {run_id} goes on at the coordinator; follow it with 'fedguard run status {run_id}', stop it "
                f"with 'fedguard run stop {run_id}'") in " ".join(err.split())
        assert _status(walk, run_id)["state"] == "running"
        stopped = json.loads(walk.fedguard("coordinator", "run", "stop", run_id, "--json"))
        assert (stopped["state"], stopped["flower_status"]) == ("stopped", "finished:stopped"), stopped
        assert stopped["serverapp"] in ("ended", "terminated"), stopped
        assert not any("flwr-serverapp" in p for p in _mentions(root))  # the process table: the ServerApp is gone
        assert _status(walk, run_id)["state"] == "stopped"
        home = root / "coordinator" / "fedguard"
        events = [json.loads(line) for line in (home / "runs" / run_id / "progress.jsonl").read_text().splitlines()]
        ours = [e["event"] for e in events if e["event"] != "stage"]
        assert ours[-1] == "stopped" and "failed" not in ours, ours  # a stop is not reported as a failure
        registry = Registry.open(Settings(home=home, database_url=None))
        with registry.transaction() as session:
            audited = session.exec(select(AuditEvent).where(AuditEvent.action == "run.stopped",
                                                            AuditEvent.subject == run_id)).all()
        assert len(audited) == 1 and audited[0].actor.startswith("user:"), audited
        assert registry.verify_audit_chain() > 0
        again = walk.fedguard("coordinator", "run", "stop", run_id, code=2)
        assert "already ended (stopped)" in " ".join(again.split())

        # kings revoked: its agent says so and exits 7
        walk.fedguard("coordinator", "site", "revoke", "kings", "--reason", "left the consortium")
        assert walk.services["kings"].wait(180) == 7, walk.output("kings")
        assert "revoked" in walk.output("kings"), walk.output("kings")

        # a third run that waits for queens; SIGTERM to every service while it waits
        third = json.loads(walk.fedguard("coordinator", "run", "launch", "job.toml", "--no-follow", "--json")
                           .strip().splitlines()[-1])
        walk.until(lambda: LATE in json.loads(walk.fedguard("coordinator", "run", "status", third["run_id"], "--json"))
                   .get("site_reasons", {}), f"the third run waiting for {LATE}", 180)
        assert any("flower-superexec" in p for p in _mentions(root))  # what SIGTERM used to leave behind
        codes = walk.stop_all()
        assert codes == {"coordinator": 0, "st-marys": 0, "guys": 0, "kings": 7}, (codes, walk.tails())
        try:
            walk.until(lambda: not _mentions(root), "no process of the federation left", 30)
        except AssertionError as exc:  # name what is left, so that a failure says which process lingered
            raise AssertionError(f"still running: {_mentions(root)}\n{exc}") from None
        assert sorted(p.name for p in walk.tmp.iterdir()) == []
    finally:  # a failed walk leaves no federation running
        walk.stop_all()
