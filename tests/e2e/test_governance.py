"""The governance story end to end (issue 14, point 9), on a simulated consortium.

Under a declared policy, version 1 (a small model whose lineage names
``site-0`` and ``site-1``, published without training) goes into production
in ``clinic-north``; then three simulated sites train version 2, which is
promoted through staging into production there
and served by two real uvicorn replicas. Then ``site-1`` withdraws its
consent: versions 1 and 2 are tainted in one transaction, and both replicas
answer 503 within a second of the command's exit. ``fedguard retrain``
trains version 3 without ``site-1``; it supersedes version 2, passes its
gates, is promoted, and both replicas serve it. ``fedguard audit trace`` at
three instants tells the story, and the sites hold the coordinator's signed
audit checkpoints as witnesses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.retrain import plan
from lifecycle.audit.checkpoints import AuditKey
from lifecycle.audit.witness import WitnessLog, witness_path
from lifecycle.bom import read_bom, read_lineage
from lifecycle.governance.policies import PolicyStore
from lifecycle.governance.stages import StageStore
from lifecycle.home import SiteHome
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from simulations.federation import SimulationConfig, run
from simulations.retrain import run_simulation
from tests.conftest import make_publication
from tests.e2e.conftest import run_cli
from tests.serving.conftest import bearer
from tests.serving.rollout.test_killswitch_replicas import replica

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("shared_ray")]  # one Ray head per pytest worker, not one per run

MODEL, ENV = "consortium", "clinic-north"
LIMIT_S = 1.0
POLICY = """\
on-taint = "block"

[staging]
signature-verified = true
consent-clean = true

[production]
min-accuracy = 0.3
max-record-epsilon = 10.0
signature-verified = true
consent-clean = true
"""
SIMULATION = SimulationConfig(sites=3, rounds=1, local_epochs=1, dp_epsilon=8.0, watermark="none",
                              secure_agg="none", model_name=MODEL, dataset="wine", alpha=100.0)


def quiet(event: str, payload: dict[str, Any]) -> None:
    """The simulation's progress, unused here."""


def until(clients: list[httpx.Client], body: dict[str, Any], headers: dict[str, str],
          ok: Callable[[httpx.Response], bool]) -> float:
    """Seconds until every replica's answer satisfies ``ok`` (fails after 5 s)."""
    started = time.monotonic()
    pending = list(clients)
    while pending:
        pending = [c for c in pending if not ok(c.post(f"/v1/models/{MODEL}/predict", json=body, headers=headers))]
        if time.monotonic() - started > 5:
            pytest.fail(f"{len(pending)} replica(s) still not switched after 5 s")
        time.sleep(0.01)
    return time.monotonic() - started


def serves(version: int) -> Callable[[httpx.Response], bool]:
    return lambda r: r.status_code == 200 and r.json()["version"] == version


def withdrawn(response: httpx.Response) -> bool:
    return response.status_code == 503 and "site" not in response.json()["error"]["message"]


def trace(home: Path, at: datetime) -> dict[str, Any]:
    done = run_cli(home, "audit", "trace", "--model", MODEL, "--env", ENV, "--at", at.isoformat(), "--json", "-")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_withdrawal_taints_blocks_production_and_a_retrain_restores_it(fedguard_home: Path) -> None:
    registry = Registry.open()
    PolicyStore(registry).set(MODEL, POLICY, actor="user:ops")
    assert publish_model(registry, make_publication(MODEL)).version == 1
    assert run(SIMULATION, quiet)["version"] == 2
    stages = StageStore(registry)
    stages.promote(MODEL, 1, to="production", environment=ENV, actor="user:ops")
    stages.promote(MODEL, 2, to="staging", environment=ENV, actor="user:ops")
    stages.promote(MODEL, 2, to="production", environment=ENV, actor="user:ops")
    serving_v2 = datetime.now(UTC)

    settings = ServingSettings(environment=ENV, quota_rate=10_000, quota_burst=10_000)
    apps = [create_app(Registry.open(), settings), create_app(Registry.open(), settings)]
    key = bearer(create_key(registry, "predict", "clinic"))
    body = {"instances": [[0.0] * 13]}
    with ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=stack.enter_context(replica(app)), timeout=10))
                   for app in apps]
        until(clients, body, key, serves(2))

        done = run_cli(fedguard_home, "site", "withdraw", "site-1", "--reason", "consent withdrawn 2026-12-01",
                       "--json")
        assert done.returncode == 0, done.stderr
        blocked = until(clients, body, key, withdrawn)
        assert blocked < LIMIT_S, f"replicas answered 503 only {blocked:.3f} s after the withdrawal"
        after_withdrawal = datetime.now(UTC)
        outcome = json.loads(done.stdout)
        assert sorted(outcome["tainted"]) == [f"{MODEL}:1", f"{MODEL}:2"]
        listed = json.loads(run_cli(fedguard_home, "models", "list", "--tainted", "--json").stdout)
        assert [entry["ref"] for entry in listed] == [f"{MODEL}:1", f"{MODEL}:2"]
        promote = run_cli(fedguard_home, "models", "promote", f"{MODEL}:2", "--to", "production", "--env",
                          "clinic-south")
        assert promote.returncode == 11 and "consent-clean" in promote.stderr

        retrained = run_simulation(plan(registry, MODEL), quiet)
        new = registry.get_version(MODEL, retrained["version"])
        assert (new.version, new.supersedes) == (3, 2)
        assert {s.site for s in new.sites} == {"site-0", "site-2"}
        training = read_lineage(read_bom(new.artifact.model_dir))["training"]
        assert [(w["site"], w["scope"]) for w in training["excludes_withdrawals"]] == [("site-1", "site")]
        stages.promote(MODEL, 3, to="production", environment=ENV, actor="user:ops")
        restored = until(clients, body, key, serves(3))
        assert restored < LIMIT_S
    serving_v3 = datetime.now(UTC)

    before, during, after = (trace(fedguard_home, at) for at in (serving_v2, after_withdrawal, serving_v3))
    assert before["serving"][0]["in_force"]["stable_version"] == 2 and not before["serving"][0]["in_force"]["killed"]
    assert not before["versions"][0]["consent"]["tainted"]
    assert during["serving"][0]["in_force"]["killed"]
    assert during["versions"][0]["consent"]["tainted"]
    assert after["serving"][0]["in_force"]["stable_version"] == 3
    [story] = after["versions"]
    assert story["version"] == 3 and not story["consent"]["tainted"]
    assert all(g["passed"] for g in story["gates"] if g["stage"] == "production")

    audit_key = AuditKey.ensure(registry.home.keys).fingerprint
    for site in ("site-0", "site-2"):  # each site that trained keeps the coordinator's checkpoints as a witness
        held = WitnessLog(witness_path(SiteHome.under(fedguard_home, site).audit_log)).witnessed()
        assert held and {e.signed.checkpoint.key for e in held} == {audit_key}
    assert run_cli(fedguard_home, "audit", "verify").returncode == 0
