"""``fedguard retrain`` plans (issue 14, point 4): which sites stay, what the new run is told; no process runs here."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from coordinator.config import CoordinatorConfig
from coordinator.retrain import launch, plan
from coordinator.roster import policy_check
from coordinator.runs.job import Job
from coordinator.withdrawals import (
    ExcludedWithdrawal,
    check_against_registry,
    encode,
    parse,
    registry_withdrawn_sites,
)
from federation.protocol import IdentityReply
from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, SiteRecord, VersionRecord
from lifecycle.registry.tables import AuditEvent, ModelVersion
from tests.conftest import make_publication

SITES = ("site-0", "site-1", "site-2")


def publish_trained(registry: Registry, mode: str, *, name: str = "demo", data_dir: str = "",
                    lineage: tuple[str, ...] = SITES, config: dict[str, Any] | None = None) -> VersionRecord:
    """A version whose registered run is a fedguard job of ``mode`` over three sites (no training)."""
    run_config = CoordinatorConfig.from_mapping({
        "num-sites": 3, "secure-aggregation": "none", "model-name": name, "data-dir": data_dir,
        "num-server-rounds": 1, "watermark": "none", **(config or {})}).as_dict()
    sites = [SiteRecord(site, 10, f"{n:064x}", None, None, 1) for n, site in enumerate(lineage)]
    return publish_model(registry, replace(make_publication(name), run_config=run_config, sites=sites, mode=mode))


def withdraw(registry: Registry, record: VersionRecord, site: str, scope: str = "site", *, taint: bool = True,
             source: str = "coordinator", count: int = 12) -> int:
    """A consent withdrawal row (and its taint of ``record``), as the consent work records them."""
    with registry.transaction() as session:
        row = ConsentWithdrawal(site=site, scope=scope, reason="consent withdrawn", actor="cli:dpo", source=source,
                                record_count=count if scope != "site" else None)
        session.add(row)
        session.flush()
        assert row.id is not None
        if taint:
            version_id = session.exec(select(ModelVersion.id).where(ModelVersion.run_id == record.run_id)).one()
            assert version_id is not None
            session.add(ModelTaint(model_version_id=version_id, withdrawal_id=row.id))
        return row.id


def test_a_simulation_retrain_drops_the_withdrawn_partition_and_keeps_everything_else(registry: Registry) -> None:
    record = publish_trained(registry, "simulation", data_dir="/runs/sim-1/data", config={"seed": 7})
    number = withdraw(registry, record, "site-1")
    retrain = plan(registry, "demo")
    assert (retrain.mode, retrain.version, retrain.kept, retrain.dropped) == (
        "simulation", 1, ("site-0", "site-2"), ("site-1",))
    assert retrain.changes == {"model-name": "demo", "num-sites": 2, "min-sites": 0, "supersedes": 1,
                               "excludes-withdrawals": f"{number}:site:site-1"}
    assert retrain.run_config["seed"] == 7 and retrain.run_config["data-dir"] == "/runs/sim-1/data"
    assert "run-id" not in retrain.run_config and not retrain.notes
    assert retrain.to_dict()["withdrawals"] == [{"id": number, "site": "site-1", "scope": "site"}]


def test_a_deployment_retrain_resubmits_the_job_without_its_identity_and_with_fewer_sites(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = publish_trained(registry, "deployment", config={"run-id": "abc123", "min-sites": 3})
    records = withdraw(registry, record, "site-0", "records", source="site")  # the site's agent excludes them
    whole = withdraw(registry, record, "site-2", taint=False)  # a whole-site withdrawal of its lineage counts too
    retrain = plan(registry, "demo", 1)
    assert (retrain.kept, retrain.dropped) == (("site-0", "site-1"), ("site-2",))
    assert retrain.changes["num-sites"] == 2 and retrain.changes["min-sites"] == 2
    assert retrain.changes["excludes-withdrawals"] == f"{records}:records:site-0,{whole}:site:site-2"
    assert "run-id" not in retrain.run_config and "agent leaves those records out" in retrain.notes[0]
    submitted: list[Job] = []
    monkeypatch.setattr("coordinator.run_cli._submit_and_follow", lambda job, *args: submitted.append(job))
    monkeypatch.setattr("coordinator.run_cli._connection", lambda *args: None)
    launch(retrain, federation="fedguard", superlink=None, root_certificates=None, insecure=True, follow=False,
           timeout=None, as_json=False, console=None)  # type: ignore[arg-type]
    (job,) = submitted
    assert job.run_id == "" and job.config["supersedes"] == 1 and job.config["num-sites"] == 2
    assert CoordinatorConfig.from_mapping(job.config).withdrawn_sites == {"site-2"}


def test_a_retrain_of_a_retrained_version_keeps_excluding_what_its_run_excluded(registry: Registry) -> None:
    first = withdraw(registry, publish_trained(registry, "deployment"), "site-1", taint=False)
    record = publish_trained(registry, "deployment", lineage=("site-0", "site-2"),
                             config={"num-sites": 2, "excludes-withdrawals": f"{first}:site:site-1"})
    second = withdraw(registry, record, "site-0", "records", source="site")
    retrain = plan(registry, "demo", 2)
    assert [w.id for w in retrain.withdrawals] == [first, second] and retrain.dropped == ()
    assert retrain.changes["num-sites"] == 2 and retrain.changes["supersedes"] == 2


def test_records_withdrawals_nothing_would_exclude_refuse_the_retrain(registry: Registry) -> None:
    simulated = publish_trained(registry, "simulation", name="sim")
    withdraw(registry, simulated, "site-1", "records", source="site")
    with pytest.raises(ConfigurationError, match="simulation keep no consent list.*withdraw the whole site"):
        plan(registry, "sim")
    withdraw(registry, simulated, "site-1")  # the whole site after all: its records go with it
    assert plan(registry, "sim").dropped == ("site-1",)
    deployed = publish_trained(registry, "deployment", config={"run-id": "d1"})
    operator = withdraw(registry, deployed, "site-0", "records", count=3)
    with pytest.raises(ConfigurationError, match=f"#{operator} \\(site-0, records\\) that the operator recorded"):
        plan(registry, "demo")
    withdraw(registry, deployed, "site-0", "records", source="site", count=2, taint=False)  # another list: no match
    with pytest.raises(ConfigurationError, match="the operator recorded"):
        plan(registry, "demo")
    withdraw(registry, deployed, "site-0", "records", source="site", count=3, taint=False)  # the site's own statement
    confirmed = plan(registry, "demo")  # site-1 withdrew as a whole above: left out of this one too
    assert operator in {w.id for w in confirmed.withdrawals} and confirmed.dropped == ("site-1",)


def test_bad_input_is_refused_with_its_exit_code(registry: Registry) -> None:
    record = publish_trained(registry, "simulation")
    with pytest.raises(ConfigurationError, match="nothing to retrain it without"):
        plan(registry, "demo")
    with pytest.raises(NotFoundError):
        plan(registry, "nope")
    with pytest.raises(NotFoundError):
        plan(registry, "demo", 7)
    secagg = publish_trained(registry, "simulation", name="strict", config={"secure-aggregation": "secagg+"})
    withdraw(registry, secagg, "site-0")
    with pytest.raises(ConfigurationError, match="secagg\\+ needs at least 3 sites"):
        plan(registry, "strict")
    for site in SITES:
        withdraw(registry, record, site)
    with pytest.raises(ConfigurationError, match="every site that trained demo:1 withdrew"):
        plan(registry, "demo")


def test_the_cli_dry_run_prints_the_plan_and_trains_nothing(registry: Registry) -> None:
    from fedguard.cli import app

    withdraw(registry, publish_trained(registry, "simulation"), "site-1")
    runner = CliRunner()
    result = runner.invoke(app, ["retrain", "demo", "--without-withdrawn", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["sites_dropped"] == ["site-1"]
    text = runner.invoke(app, ["retrain", "demo:1", "--without-withdrawn", "--dry-run"])
    assert "would retrain demo:1" in text.stdout and "left out: site-1" in text.stdout, text.output
    refused = runner.invoke(app, ["retrain", "demo"])
    assert isinstance(refused.exception, ConfigurationError) and "--without-withdrawn" in str(refused.exception)
    assert len(registry.versions("demo")) == 1


def test_the_coordinator_refuses_a_withdrawn_site_before_round_1() -> None:
    cfg = CoordinatorConfig.from_mapping({"secure-aggregation": "none",
                                          "excludes-withdrawals": encode([ExcludedWithdrawal(3, "guys", "site")])})
    check = policy_check(cfg)
    refusal = check(IdentityReply("guys", "m" * 64, 10, require_protection=False))
    assert refusal is not None and refusal.code == "withdrawn"
    assert check(IdentityReply("kings", "m" * 64, 10, require_protection=False)) is None
    registry_check = policy_check(CoordinatorConfig.from_mapping({"secure-aggregation": "none"}), {"kings"})
    refusal = registry_check(IdentityReply("kings", "m" * 64, 10, require_protection=False))
    assert refusal is not None and refusal.code == "withdrawn"  # withdrawn in the registry: whatever the run config
    assert parse("3:site:guys, 4:records:kings") == (ExcludedWithdrawal(3, "guys", "site"),
                                                     ExcludedWithdrawal(4, "kings", "records"))
    with pytest.raises(ConfigurationError, match="not ID:SCOPE:SITE"):
        CoordinatorConfig.from_mapping({"excludes-withdrawals": "guys"})
    with pytest.raises(ConfigurationError, match="cannot be named"):
        encode([ExcludedWithdrawal(3, "a site", "site")])


def test_a_version_that_supersedes_records_it_with_its_own_audit_event(registry: Registry) -> None:
    publish_model(registry, make_publication("demo"))
    pub = replace(make_publication("demo"), supersedes=1,
                  excludes_withdrawals=({"id": 3, "site": "site-1", "scope": "site"},))
    assert publish_model(registry, pub).supersedes == 1
    with registry.transaction() as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "model.retrained")
                             .order_by(col(AuditEvent.id).desc())).one()
    assert event.subject == "demo:2" and json.loads(event.details_json) == {
        "from": "demo:1", "to": "demo:2", "withdrawals": [{"id": 3, "site": "site-1", "scope": "site"}]}
    with pytest.raises(NotFoundError, match="no version 5"):
        publish_model(registry, replace(make_publication("demo"), supersedes=5))


def test_a_simulation_retrain_reads_the_settings_its_run_kept(registry: Registry, tmp_path: Path) -> None:
    from simulations.federation import SimulationConfig
    from simulations.retrain import simulation_config

    run_dir = tmp_path / "sim-1"
    record = publish_trained(registry, "simulation", data_dir=str(run_dir / "data"))
    withdraw(registry, record, "site-1")
    retrain = plan(registry, "demo")
    with pytest.raises(ConfigurationError, match="kept its settings in .*outcome.json, which is gone"):
        simulation_config(retrain)
    run_dir.mkdir()
    (run_dir / "outcome.json").write_text(json.dumps({"config": {"sites": 3, "alpha": 0.3, "seed": 7,
                                                                 "dataset": "wine", "retired": 1}}))
    assert simulation_config(retrain) == SimulationConfig(sites=3, alpha=0.3, seed=7, dataset="wine")


def test_the_run_config_withdrawals_and_supersedes_are_checked_against_the_registry(registry: Registry) -> None:
    record = publish_trained(registry, "deployment", config={"run-id": "r1"})
    whole = withdraw(registry, record, "site-1")
    withdraw(registry, record, "site-0", "records", taint=False)
    assert registry_withdrawn_sites(registry) == {"site-1"}
    good = ExcludedWithdrawal(whole, "site-1", "site")
    check_against_registry(registry, model="demo", supersedes=1, withdrawals=[good])
    check_against_registry(registry, model="demo", supersedes=0, withdrawals=[])
    for bad, message in ((ExcludedWithdrawal(whole, "site-2", "site"), "it is site 'site-1' scope 'site'"),
                         (ExcludedWithdrawal(whole, "site-1", "records"), "it is site 'site-1' scope 'site'"),
                         (ExcludedWithdrawal(99, "site-1", "site"), "99:site:site-1, but there is none")):
        with pytest.raises(ConfigurationError, match=message):
            check_against_registry(registry, model="demo", supersedes=1, withdrawals=[good, bad])
    with pytest.raises(ConfigurationError, match="'supersedes' = 4: model 'demo' has no such version"):
        check_against_registry(registry, model="demo", supersedes=4, withdrawals=[])
    publish_trained(registry, "deployment", name="clean", lineage=("site-0",), config={"num-sites": 1})
    with pytest.raises(ConfigurationError, match="clean:1 is not tainted"):
        check_against_registry(registry, model="clean", supersedes=1, withdrawals=[])


@pytest.mark.postgres
@pytest.mark.integration
def test_the_plan_and_the_superseding_publication_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    from lifecycle.settings import Settings

    registry = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    try:
        record = publish_trained(registry, "deployment", config={"run-id": "pg1"})
        number = withdraw(registry, record, "site-1")
        withdraw(registry, record, "site-2", "records", taint=False)  # records of a site: only if it taints
        retrain = plan(registry, "demo")
        assert [w.id for w in retrain.withdrawals] == [number] and retrain.dropped == ("site-1",)
        pub = replace(make_publication("demo"), supersedes=1, excludes_withdrawals=tuple(
            w.to_dict() for w in retrain.withdrawals))
        assert publish_model(registry, pub).supersedes == 1
    finally:
        registry.engine.dispose()
