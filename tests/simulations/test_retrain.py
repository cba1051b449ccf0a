"""One real ``fedguard retrain`` of a simulated version: the withdrawn site is gone, the new version supersedes.

The tainted version is published without training (its run folder holds the
settings ``fedguard simulate`` keeps); the retrain itself is a real
simulation on the smallest configuration. It also shows the sites acting as
witnesses: each virtual site keeps the audit checkpoint its messages carried.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from sqlmodel import Session, select

from coordinator.config import CoordinatorConfig
from coordinator.retrain import plan
from lifecycle.audit.checkpoints import AuditKey
from lifecycle.audit.witness import WitnessLog, witness_path
from lifecycle.bom import read_bom, read_lineage
from lifecycle.home import SiteHome
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, SiteRecord
from lifecycle.registry.tables import AuditEvent, TrainingRun
from simulations.federation import SimulationConfig
from simulations.retrain import run_simulation
from tests.conftest import make_publication
from tests.coordinator.test_retrain import withdraw


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_publishes_a_version_without_the_withdrawn_site_that_supersedes_the_tainted_one(
    registry: Registry, fedguard_home: Path, tmp_path: Path
) -> None:
    sim = SimulationConfig(sites=3, rounds=1, local_epochs=1, dp_epsilon=0.0, watermark="none", secure_agg="none",
                           model_name="retrain-demo", dataset="wine")
    run_dir = tmp_path / "sim-tainted"
    run_dir.mkdir()
    (run_dir / "outcome.json").write_text(json.dumps({"config": asdict(sim)}))
    run_config = CoordinatorConfig.from_mapping(sim.coordinator_overrides(run_dir / "data", run_dir / "x")).as_dict()
    sites = [SiteRecord(f"site-{n}", 40, f"{n:064x}", None, None, 1) for n in range(3)]
    tainted = publish_model(registry, replace(make_publication("retrain-demo"), run_config=run_config, sites=sites))
    number = withdraw(registry, tainted, "site-1")

    outcome = run_simulation(plan(registry, "retrain-demo"), lambda event, payload: None)

    new = registry.get_version("retrain-demo", outcome["version"])
    assert (new.version, new.supersedes) == (2, 1)
    assert {s.site for s in new.sites} == {"site-0", "site-2"}
    excluded = [{"id": number, "site": "site-1", "scope": "site"}]
    training = read_lineage(read_bom(new.artifact.model_dir))["training"]
    assert training["excludes_withdrawals"] == excluded
    assert {s["site"] for s in training["sites"]} == {"site-0", "site-2"}
    with Session(registry.engine) as session:
        run = session.get(TrainingRun, new.run_id)
        assert run is not None and json.loads(run.config_json)["excludes-withdrawals"] == f"{number}:site:site-1"
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "model.retrained")).one()
    assert json.loads(event.details_json) == {"from": "retrain-demo:1", "to": "retrain-demo:2",
                                              "withdrawals": excluded}
    key = AuditKey.ensure(registry.home.keys).fingerprint
    for site in ("site-0", "site-2"):  # each site that trained keeps the coordinator's checkpoint as a witness
        held = WitnessLog(witness_path(SiteHome.under(fedguard_home, site).audit_log)).witnessed()
        assert held and {e.signed.checkpoint.key for e in held} == {key}
