"""Runs over the real deployment runtime on loopback (issue 4, points 4, 5a, 5b, 8; CKKS).

One provisioned federation (``tests/integration/deployment.py``): the
coordinator (SuperLink with TLS, SuperNode authentication and its state in a
database file, behind the mutual-TLS gateway) and four site agents started
from their enrolment bundles, which carry the federation's CKKS secret
context (SecAgg+ with 4 sites tolerates one dropout: k=3, t=2; with 3 it
tolerates none; CKKS with 4 sites aggregates from 3), shared by the tests of this module (pytest's
``--dist loadfile`` runs them all on one xdist worker; each test leaves it
whole). Jobs go through the real ``fedguard run launch|resume`` command,
which finds the SuperLink and its CA in ``FEDGUARD_HOME/federation`` by
itself; progress is read from the run's ``progress.jsonl`` the way that
command follows it (:func:`_until`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from client.supernode import SiteAgent
from coordinator.runs.control import UNREACHABLE, is_serverapp, serverapp
from coordinator.runs.launch import events, flower_runs, progress_path
from coordinator.runs.progress import size
from lifecycle.home import Home, SiteHome
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from privacy.ledger import coordinator_ledger
from privacy.ledger.factory import SiteLedger
from tests.integration.deployment import Federation, prepare_sites

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]  # --dist loadfile: one federation

SITES = 4


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Path]]:
    root = tmp_path_factory.mktemp("federation")
    data = prepare_sites(root, SITES)
    with Federation(root, SITES, fast=True, he=True).running(data) as fed:  # bundles carry the CKKS secret context
        yield fed, data


@dataclass(frozen=True)
class Submitted:
    """One submission of a run (``fedguard run launch|resume``): what its follower needs."""

    run_id: str
    flower_run: int
    offset: int
    """Size of the run's progress log before the submission: its follower reads only what comes after."""


def _fedguard(fed: Federation, command: str, arg: str) -> Submitted:
    """``fedguard run COMMAND ARG --no-follow --json``; the follow is :func:`_until`'s."""
    offset = size(progress_path(Home(fed.home), arg)) if command == "resume" else 0  # as the command's own follow
    proc = subprocess.run(
        [sys.executable, "-m", "fedguard.cli", "run", command, arg, "--no-follow", "--json"],  # finds the SuperLink
        env=fed.client_env(), capture_output=True, text=True, timeout=180, cwd=fed.root, check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{fed.logs()}"
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    return Submitted(reply["run_id"], int(reply["flower_run"]), offset)


def _run_cli(fed: Federation, *args: str) -> subprocess.CompletedProcess[str]:
    """``fedguard run ARGS`` on the coordinator machine (it finds the SuperLink and its CA by itself)."""
    return subprocess.run([sys.executable, "-m", "fedguard.cli", "run", *args], env=fed.client_env(),
                          capture_output=True, text=True, timeout=180, cwd=fed.root, check=False)


def _state(fed: Federation, run_id: str) -> str:
    """``fedguard run status RUN_ID --json``'s state."""
    proc = _run_cli(fed, "status", run_id, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(json.loads(proc.stdout)["state"])


def _job(tmp_path: Path, data: Path, **extra: Any) -> Path:
    values = {"num-server-rounds": 2, "num-sites": SITES, "local-epochs": 1, "data-dir": str(data),
              "round-timeout": 300.0, "model-name": "cardio", **extra}  # a healthy round never waits for it
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _until(fed: Federation, run: Submitted, predicate: Callable[[dict[str, Any]], bool],
           timeout: float = 400) -> list[dict[str, Any]]:
    """The run's events until ``predicate`` holds, read as ``fedguard run launch|resume`` follows them.

    The product's follower (:func:`coordinator.runs.launch.events`) from the
    same offset and for the same Flower run, so the same predicate
    (:func:`coordinator.runs.progress.from_other_flower_run`) decides which
    failure is the run's: the late failure of the Flower run a resume
    stopped ("ObjectPushError ... push session may have expired") is
    history, as the operator's ``fedguard run resume`` shows it.
    """
    seen = []
    for event in events(Home(fed.home), run.run_id, offset=run.offset, timeout=timeout, flower_run=run.flower_run):
        seen.append(event)
        assert event["event"] != "failed", f"{event}\n{fed.logs()}"
        if predicate(event):
            return seen
    raise AssertionError(f"run {run.run_id}: condition not reached; events {seen}\n{fed.logs()}")


def _flower_status(fed: Federation, flower_run: int) -> str:
    """The SuperLink's status of one Flower run (``flwr ls --run-id``), e.g. ``running``, ``finished:stopped``."""
    fed.write_flwr_config()
    proc = subprocess.run([sys.executable, "-m", "flwr.cli.app", "ls", "fedguard", "--run-id", str(flower_run),
                           "--format", "json"], env=fed.client_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    runs = json.loads(proc.stdout[proc.stdout.find("{"):]).get("runs", []) if "{" in proc.stdout else []
    assert len(runs) == 1, f"{proc.stdout}\n{proc.stderr}"
    return str(runs[0]["status"])


def _charges(fed: Federation, run_id: str) -> list[tuple[str, int, str]]:
    ledger = coordinator_ledger(Registry.open(fed.settings))
    keys = []
    for i in range(SITES):
        for manifest in ledger.manifests(f"site-{i}"):
            keys += [(c.site, c.round, c.kind) for c in ledger.charges(f"site-{i}", manifest, "record")
                     if c.run_id == run_id]
    return keys


def test_coordinator_killed_mid_run_resumes_from_last_round(federation: tuple[Federation, Path],
                                                            tmp_path: Path) -> None:
    fed, data = federation
    launched = _fedguard(fed, "launch", str(_job(tmp_path, data)))
    run_id = launched.run_id
    _until(fed, launched, lambda e: e["event"] == "round" and e["round"] == 1)
    fed.kill_coordinator()  # SIGKILL: SuperLink, its SuperExec and the ServerApp, mid-round 2; gateway down
    assert _state(fed, run_id) == UNREACHABLE  # no guess while the SuperLink is down
    fed.start_coordinator()  # same superlink.db and ports; the sites' forwarders reconnect
    recorded = serverapp(fed.home / "runs", run_id)
    assert recorded is not None and recorded[1] == launched.flower_run
    deadline = time.monotonic() + 60  # the orphaned ServerApp exits once its SuperExec is gone
    while is_serverapp(recorded[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(fed, run_id) == "interrupted"  # the SuperLink says running; nothing runs it
    resumed = _fedguard(fed, "resume", run_id)  # stops the interrupted Flower run first: nothing runs it any more
    assert _flower_status(fed, launched.flower_run) in ("finished:stopped", "finished:failed")  # not "running"
    _until(fed, resumed, lambda e: e["event"] == "done")

    outcome = json.loads((fed.home / "runs" / run_id / "outcome.json").read_text())
    assert outcome["resumed_after"] >= 1
    assert outcome["flower_runs"] == flower_runs(Home(fed.home), run_id) == [launched.flower_run,
                                                                               resumed.flower_run]
    assert [h["round"] for h in outcome["history"]] == [1, 2]  # each round once, none lost
    charges = _charges(fed, run_id)
    assert len(charges) == len(set(charges)) == SITES * 2  # each site charged once per round
    for i in range(SITES):  # the sites' own ledgers: round 1 (done before the crash) was not run again
        ledger = SiteLedger.open(SiteHome.under(fed.site_home(i), f"site-{i}").ledger)
        rounds = [c.round for m in ledger.manifests(f"site-{i}") for c in ledger.charges(f"site-{i}", m, "record")]
        assert rounds.count(1) == 1 and 2 in rounds, rounds
    registry = Registry.open(fed.settings)
    assert registry.verify_audit_chain() > 0
    version = registry.get_version("cardio")
    assert {s.site for s in version.sites} == {f"site-{i}" for i in range(SITES)}


def test_site_killed_mid_round_round_completes_with_survivors(federation: tuple[Federation, Path],
                                                              tmp_path: Path) -> None:
    fed, data = federation
    job = _job(tmp_path, data, watermark="none", **{"round-timeout": 90.0})
    launched = _fedguard(fed, "launch", str(job))
    run_id = launched.run_id
    _until(fed, launched, lambda e: e["event"] == "round" and e["round"] == 1)
    # SIGKILL the site's SuperNode, executor and ClientApp, mid-round 2: the round waits round-timeout for it
    # (90 s: shorter aborts healthy SecAgg+ stages when the 2 cores are saturated, as seen at 40 s)
    fed.kill_supernode(SITES - 1)
    try:
        seen = _until(fed, launched, lambda e: e["event"] == "done")
    finally:  # the federation stays whole for the module's other tests
        fed.start_supernode(SITES - 1, data / f"site-{SITES - 1}.csv", f"site-{SITES - 1}")

    last = next(e for e in seen if e["event"] == "round" and e["round"] == 2)
    assert last["sites"] == SITES - 1 and last["dropped"] == [f"site-{SITES - 1}"]
    outcome = json.loads((fed.home / "runs" / run_id / "outcome.json").read_text())
    assert outcome["dropouts"] == [{"round": 2, "sites": [f"site-{SITES - 1}"]}]
    assert outcome["secure_aggregation"] == "secagg+"


def test_a_deployed_ckks_run_completes_with_the_secret_context_from_the_bundles(
        federation: tuple[Federation, Path], tmp_path: Path) -> None:
    """Issue point 6: the sites decrypt with the secret context their bundles carried; the coordinator adds."""
    fed, data = federation
    assert fed.he_public_context is not None
    assert fed.he_public_context == fed.layout.he_public_context  # where 'fedguard site he-keys' puts it
    job = _job(tmp_path, data, watermark="none", **{"secure-aggregation": "ckks",  # reference counts: CKKS too
                                                    "num-server-rounds": 1})
    # the job names no he-public-context: 'run launch' takes the coordinator's own
    launched = _fedguard(fed, "launch", str(job))
    seen = _until(fed, launched, lambda e: e["event"] == "done")
    assert [e["sites"] for e in seen if e["event"] == "round"] == [SITES]
    outcome = json.loads((fed.home / "runs" / launched.run_id / "outcome.json").read_text())
    assert outcome["secure_aggregation"] == "ckks"
    assert [h["round"] for h in outcome["history"]] == [1]
    assert not list(fed.home.rglob("he-secret-context*"))  # the coordinator never held the secret key


def test_a_site_whose_data_cannot_fit_is_named_and_the_run_exits_9(federation: tuple[Federation, Path],
                                                                    tmp_path: Path) -> None:
    """Issue 13, point 2: the reason reaches ``run launch`` by site name; the run never starts round 1."""
    fed, data = federation
    path = data / f"site-{SITES - 1}.csv"
    original = path.read_text()
    path.write_text(original.replace(",1\n", ",not-a-label\n"))  # the site re-reads a changed file
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fedguard.cli", "run", "launch", str(_job(tmp_path, data, **{"site-deadline": 3.0})),
             "--timeout", "150"], env=fed.client_env(), capture_output=True, text=True, timeout=240, cwd=fed.root,
            check=False)
    finally:
        path.write_text(original)
    out = proc.stdout
    assert proc.returncode == 9, f"{out}\n{proc.stderr}\n{fed.logs()}"
    assert f"site-{SITES - 1}: the site's data does not match its schema: label (unknown-label)" in out, out
    assert "run failed (exit 9)" in out and "round 1/" not in out
    assert "not-a-label" not in out and "node " not in out and "{" not in out  # no data, no node id, no dict


def test_an_agent_reporting_another_sites_name_is_refused(federation: tuple[Federation, Path],
                                                          tmp_path: Path) -> None:
    """Issue 12, point 2: enrolled as site-x, configured as site-0: refused, audited, site-0's ledger its own."""
    fed, data = federation
    impostor = SITES
    fed.agents[impostor] = _claiming(fed, impostor, data / "site-0.csv", enrolled="site-x", claims="site-0")
    try:
        fed.wait_online({f"site-{i}" for i in range(SITES)} | {"site-x"})
        launched = _fedguard(fed, "launch", str(_job(tmp_path, data, watermark="none", **{"num-server-rounds": 1})))
        run_id = launched.run_id
        seen = _until(fed, launched, lambda e: e["event"] == "done")
    finally:
        fed.kill_supernode(impostor)
    assert [e["sites"] for e in seen if e["event"] == "round"] == [SITES]
    charges = _charges(fed, run_id)
    assert len(charges) == len(set(charges)) == SITES and ("site-0", 1, "record") in charges
    registry = Registry.open(fed.settings)
    assert not [c for c in coordinator_ledger(registry).charges("site-x") if c.run_id == run_id]
    with registry.transaction() as session:
        events = [e for e in session.exec(select(AuditEvent).where(AuditEvent.action == "site.identity-mismatch"))
                  if json.loads(e.details_json)["run"] == run_id]
    assert [(e.subject, json.loads(e.details_json)["enrolled"]) for e in events] == [("site-0", "site-x")]


def _claiming(fed: Federation, index: int, data_path: Path, *, enrolled: str, claims: str) -> SiteAgent:
    """``fedguard client start --bundle <enrolled>.bundle`` with ``site-name`` set to another site's name."""
    flwr_home = fed.root / f"flwr-site-{index}"
    agent = SiteAgent(fed.enroll(enrolled), {"site-name": claims, "data-path": str(data_path)},
                      log_path=fed.root / "logs" / f"site-{index}.log", env=fed._env(flwr_home, fed.site_home(index)))
    return agent.start()
