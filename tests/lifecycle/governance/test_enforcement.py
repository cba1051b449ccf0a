"""Governance enforced on every path (review of issue 14), on SQLite and PostgreSQL.

Listed approvers, stages on the deploy paths and at adoption, the taint re-checked under the promotion's
lock, implied consent, overrides bound to what they overrode, staging's gates on a jump to production,
one production version under concurrency, and replayed approval signatures.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from lifecycle.errors import ConfigurationError, GovernanceError, NotFoundError
from lifecycle.governance import gates
from lifecycle.governance.approvals import approve
from lifecycle.governance.operator import ApproverKey
from lifecycle.governance.policies import PolicyStore
from lifecycle.governance.policy import parse_policy
from lifecycle.governance.stages import Override, StageStore
from lifecycle.governance.tables import Approval, GateDecision
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.tables import AuditEvent, ModelVersion
from lifecycle.settings import Settings
from tests.conftest import make_publication
from tests.lifecycle.governance.test_stages import add_versions, failed_decision, failing, taint

NORTH = "clinic-north"
GOVERNED = "[staging]\nsignature-verified = true\n[production]\nsignature-verified = true\n"


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    """demo:1..3 (one signed artifact), on each backend."""
    opened = Registry.open(backend_settings)
    publish_model(opened, make_publication())
    add_versions(opened, 2)
    yield opened
    opened.engine.dispose()


def govern(registry: Registry, document: str = GOVERNED) -> None:
    PolicyStore(registry).set("demo", document, actor="test")


def test_the_approvers_key_is_a_list_of_fingerprints() -> None:
    key = ApproverKey.generate("Alice")
    policy = parse_policy(f'approvers = ["{key.fingerprint.upper()}"]\n[production]\nrequired-approvals = 1\n')
    assert policy.approvers == (key.fingerprint,) and policy.allows(key.fingerprint) and not policy.allows("0" * 64)
    assert policy.to_dict()["approvers"] == [key.fingerprint]
    assert parse_policy(GOVERNED).allows("0" * 64), "without a list any key counts"
    for bad in ('approvers = "abc"', 'approvers = ["abc"]', "approvers = [1]", 'approver = []'):
        with pytest.raises(ConfigurationError, match="approver"):
            parse_policy(bad)


def test_only_the_listed_approvers_count(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = ApproverKey.generate("Alice"), ApproverKey.generate("Bob")
    govern(registry, f'approvers = ["{alice.fingerprint}"]\n{GOVERNED}required-approvals = 1\n')
    store = StageStore(registry)
    approve(registry, "demo", 1, stage="production", environment=NORTH, key=bob)
    with pytest.raises(GovernanceError, match="0 of the 1 .* by keys its approvers list"):
        store.promote("demo", 1, to="production", environment=NORTH, actor="ops")
    approve(registry, "demo", 1, stage="production", environment=NORTH, key=alice)
    assert store.promote("demo", 1, to="production", environment=NORTH, actor="ops").approvals == (alice.fingerprint,)
    failing(monkeypatch)
    with pytest.raises(GovernanceError, match=f"approver key {bob.fingerprint} may not override.*'approvers'.*"
                                              "fedguard policy set demo"):
        store.promote("demo", 2, to="staging", environment=NORTH, actor="ops", override=Override(bob, "urgent"))
    assert store.promote("demo", 2, to="staging", environment=NORTH, actor="ops",
                         override=Override(alice, "urgent")).override


def test_a_governed_model_deploys_only_what_its_stages_allow(registry: Registry) -> None:
    govern(registry)
    north, stages = DeploymentStore(registry, NORTH), StageStore(registry)
    with pytest.raises(GovernanceError, match="demo:3 cannot be stable or pinned in 'clinic-north': it is registered"):
        north.adopt("demo", actor="serve")  # nothing at production there
    assert north.revisions() == {}
    stages.promote("demo", 1, to="production", environment=NORTH, actor="ops")
    assert north.adopt("demo", actor="serve").stable_version == 1
    with pytest.raises(GovernanceError, match="demo:2 cannot be a canary or shadow.*--to staging --env clinic-north"):
        north.canary("demo", 2, 10, actor="ops")
    stages.promote("demo", 2, to="staging", environment=NORTH, actor="ops")
    with pytest.raises(GovernanceError, match="no production gate decision"):  # registered without one (no gates)
        north.canary("demo", 2, 10, actor="ops")
    gates.evaluate(registry, "demo", 2, "production", environment=NORTH, trigger="manual", actor="ops")
    assert north.canary("demo", 2, 10, actor="ops").candidate_version == 2
    with pytest.raises(GovernanceError, match="demo:2 cannot be stable or pinned.*it is staging"):
        north.promote("demo", actor="ops")
    with pytest.raises(GovernanceError, match="it is staging"):
        north.kill("demo", pin=2, actor="ops")
    assert north.kill("demo", pin=1, actor="ops").pinned_version == 1
    with registry.transaction() as session:  # version 1 loses its production decisions: none counts as failing
        row = session.exec(select(ModelVersion).where(ModelVersion.version == 1)).one()
        for decision in session.exec(select(GateDecision).where(GateDecision.model_version_id == row.id,
                                                                GateDecision.stage == "production")).all():
            decision.stage = "staging"  # (a stage event refers to it: keep the row)
            session.add(decision)
    with pytest.raises(GovernanceError, match="no production gate decision"):
        north.revive("demo", actor="ops")


def test_the_default_server_skips_a_model_it_may_not_adopt(registry: Registry, caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    from serving.rollout.router import Router
    from serving.settings import ServingSettings

    govern(registry)
    with pytest.raises(NotFoundError, match="no model can be served in environment 'default'"):
        Router.open(registry, ServingSettings())
    assert "not serving demo" in caplog.text and "--to production --env default" in caplog.text
    StageStore(registry).promote("demo", 2, to="production", environment="default", actor="ops")
    assert Router.open(registry, ServingSettings()).models["demo"].version == 2


def test_a_taint_after_the_gates_refuses_and_consent_is_always_a_gate(registry: Registry,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    govern(registry, "[staging]\nmin-accuracy = 0.1\nconsent-clean = false\n")  # consent left out: still a gate
    store, evaluate = StageStore(registry), gates.evaluate

    def then_withdrawn(registry: Registry, name: str, version: int, stage: str, **kwargs: Any) -> Any:
        report = evaluate(registry, name, version, stage, **kwargs)
        taint(registry, version)  # a withdrawal lands between the gates and the promotion's transaction
        return report

    monkeypatch.setattr(gates, "evaluate", then_withdrawn)
    with pytest.raises(GovernanceError, match="consent was withdrawn"):
        store.promote("demo", 2, to="staging", environment=NORTH, actor="ops")
    assert store.stage("demo", 2, NORTH) == "registered"
    monkeypatch.setattr(gates, "evaluate", evaluate)
    with pytest.raises(GovernanceError, match=r"consent-clean \(measured False"):
        store.promote("demo", 2, to="staging", environment=NORTH, actor="ops")
    result = store.promote("demo", 2, to="staging", environment=NORTH, actor="ops",
                           override=Override(ApproverKey.generate("Board"), "retraining under way"))
    assert result.override and store.stage("demo", 2, NORTH) == "staging"


def test_an_override_answers_only_earlier_failures_and_must_verify(registry: Registry,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    failing(monkeypatch)
    failed_decision(registry, 2, NORTH)
    StageStore(registry).promote("demo", 2, to="production", environment=NORTH, actor="ops",
                                 override=Override(ApproverKey.generate("Board"), "reviewed"))
    north = DeploymentStore(registry, NORTH)
    assert north.kill("demo", pin=2, actor="ops").pinned_version == 2
    with registry.transaction() as session:  # the override row is edited: its signature no longer matches
        row = session.exec(select(Approval)).one()
        row.reason = "something else"
        session.add(row)
    with pytest.raises(GovernanceError, match="production gates failed in 'clinic-north'"):
        north.kill("demo", pin=2, actor="ops")
    with registry.transaction() as session:
        row = session.exec(select(Approval)).one()
        row.reason = "reviewed"
        session.add(row)
    north.kill("demo", pin=2, actor="ops")
    failed_decision(registry, 2, NORTH)  # a later failing re-evaluation: the old override does not answer it
    with pytest.raises(GovernanceError, match="production gates failed"):
        north.kill("demo", pin=2, actor="ops")


def test_straight_to_production_must_pass_staging_too(registry: Registry) -> None:
    govern(registry, "[staging]\nmin-accuracy = 0.9\n[production]\nsignature-verified = true\n")
    store = StageStore(registry)
    with pytest.raises(GovernanceError, match=r"failing gate\(s\): staging: min-accuracy \(measured 0.5"):
        store.promote("demo", 1, to="production", environment=NORTH, actor="ops")
    result = store.promote("demo", 1, to="production", environment=NORTH, actor="ops",
                           override=Override(ApproverKey.generate("Board"), "accepted"))
    assert result.override and [r.stage for r in result.evaluated] == ["staging", "production"]


def test_a_replayed_approval_signature_neither_stores_nor_counts(registry: Registry) -> None:
    alice = ApproverKey.generate("Alice")
    first = approve(registry, "demo", 1, stage="staging", environment=NORTH, key=alice)
    assert StageStore(registry).promote("demo", 1, to="staging", environment=NORTH, actor="ops").approvals == (
        alice.fingerprint,)
    from datetime import datetime

    again = datetime.fromisoformat(first.signed_at)
    with pytest.raises(GovernanceError, match="already stored"):
        approve(registry, "demo", 1, stage="staging", environment=NORTH, key=alice, now=again)
    with registry.transaction() as session:  # a copy of the used row, written straight into the database
        used = session.exec(select(Approval)).one()
        copy = Approval(**{k: v for k, v in used.model_dump().items() if k not in ("id", "created_at")})
        copy.used = False
        session.add(copy)
    from lifecycle.governance import approvals as signed

    with Session(registry.engine) as session:
        version = session.exec(select(ModelVersion).where(ModelVersion.version == 1)).one()
        assert signed.usable(session, "demo", version, stage="staging", environment=NORTH) == []


@pytest.mark.postgres
def test_concurrent_promotions_leave_one_version_in_production(pg_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL only: SQLite serialises writers, so the race cannot happen there."""
    registry = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    publish_model(registry, make_publication())
    add_versions(registry, 2)
    evaluate, barrier = gates.evaluate, threading.Barrier(2, timeout=20)

    def together(*args: Any, **kwargs: Any) -> Any:
        report = evaluate(*args, **kwargs)
        barrier.wait()  # both promotions enter their transactions at once
        return report

    monkeypatch.setattr(gates, "evaluate", together)
    errors: list[BaseException] = []

    def promote(version: int) -> None:
        try:
            StageStore(registry).promote("demo", version, to="production", environment=NORTH, actor="ops")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    live = StageStore(registry).live("demo")[NORTH]
    assert len(live["production"]) == 1 and len(live["staging"]) == 1
    assert DeploymentStore(registry, NORTH).state("demo").stable_version == live["production"][0]
    with Session(registry.engine) as session:
        assert [e.action for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.id)))].count(
            "stage.promoted") == 2
    assert registry.verify_audit_chain() > 0
    registry.engine.dispose()
