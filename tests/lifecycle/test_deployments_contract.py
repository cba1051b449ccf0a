"""The deployment-state contract, run against SQLite (default) and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlmodel import Session, select

from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.database import MIGRATIONS, create_registry_engine
from lifecycle.registry.deployments import DeploymentConflict
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings
from tests.conftest import make_publication


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[DeploymentStore]:
    """A registry holding demo:1 and demo:2, and its deployment store."""
    registry = Registry.open(backend_settings)
    publish_model(registry, make_publication())
    publish_model(registry, make_publication(seed=3))
    yield DeploymentStore(registry)
    registry.engine.dispose()


def deployment_audit(store: DeploymentStore) -> list[str]:
    with Session(store.registry.engine) as session:
        events = session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
    return [e.action for e in events if e.action.startswith("deployment.")]


def test_a_never_deployed_model_serves_its_newest_version(store: DeploymentStore) -> None:
    state = store.state("demo")
    assert (state.revision, state.stable_version, state.killed, state.shares()) == (0, 2, False, {"2": 100.0})
    assert store.revisions() == {} and store.history("demo") == []
    adopted = store.adopt("demo", actor="serve")
    assert (adopted.revision, adopted.stable_version) == (1, 2)
    assert store.adopt("demo", actor="serve").revision == 1  # a second replica adopts nothing new
    assert store.revisions() == {"demo": 1}
    with pytest.raises(NotFoundError):
        store.state("nope")


def test_canary_promote_rollback_are_history_and_audit(store: DeploymentStore) -> None:
    store.adopt("demo", actor="serve")
    with pytest.raises(DeploymentConflict, match="no previous stable"):
        store.rollback("demo", actor="ops")
    # demo:2 is stable (newest); canary the older demo:1 to exercise the flow both ways.
    canary = store.canary("demo", 1, 10, actor="ops")
    assert (canary.candidate_version, canary.candidate_mode, canary.shares()) == (1, "canary", {"2": 90.0, "1": 10.0})
    raised = store.canary("demo", 1, 25, actor="ops")
    assert raised.rollout_id == canary.rollout_id, "raising the weight keeps the same rollout (sticky keys)"
    promoted = store.promote("demo", actor="ops")
    assert (promoted.stable_version, promoted.previous_version, promoted.candidate_version) == (1, 2, None)
    back = store.rollback("demo", actor="ops")
    assert (back.stable_version, back.previous_version) == (2, 1)
    history = store.history("demo")
    assert [e.action for e in history] == ["adopt", "canary", "canary", "promote", "rollback"]
    assert [e.shares for e in history] == [{"2": 100.0}, {"1": 10.0, "2": 90.0}, {"1": 25.0, "2": 75.0},
                                           {"1": 100.0}, {"2": 100.0}]
    assert [e.revision for e in history] == [1, 2, 3, 4, 5]
    assert all(e.created_at.tzinfo is not None for e in history)
    assert [e.actor for e in history[1:]] == ["ops"] * 4
    assert [e.action for e in store.history("demo", limit=2)] == ["promote", "rollback"]
    assert deployment_audit(store) == [f"deployment.{e.action}" for e in history]
    assert store.registry.verify_audit_chain() == 9 + 5  # two publications with their gate decisions, five actions


def test_shadow_then_blue_green_by_version(store: DeploymentStore) -> None:
    store.adopt("demo", actor="serve")
    shadow = store.shadow("demo", 1, actor="ops")
    assert (shadow.candidate_mode, shadow.shares()) == ("shadow", {"2": 100.0})
    switched = store.promote("demo", 1, actor="ops")
    assert (switched.stable_version, switched.candidate_version) == (1, None)
    with pytest.raises(DeploymentConflict, match="already stable"):
        store.promote("demo", 1, actor="ops")


def test_kill_pin_trip_and_revive(store: DeploymentStore) -> None:
    killed = store.kill("demo", actor="ops", reason="bad answers")
    assert store.kill("demo", actor="ops", reason="a\0b" + "c" * 300).kill_reason == "a b" + "c" * 253
    assert (killed.killed, killed.kill_mode, killed.shares(), killed.kill_reason) == (True, "503", {}, "bad answers")
    assert store.trip("demo", pin=None, actor="serve:error-rate", source="error-rate", reason="x") is None
    pinned = store.kill("demo", pin=1, actor="ops")
    assert (pinned.kill_mode, pinned.pinned_version, pinned.shares()) == ("pinned", 1, {"1": 100.0})
    revived = store.revive("demo", actor="ops")
    assert (revived.killed, revived.kill_mode, revived.pinned_version, revived.stable_version) == (False, None, None, 2)
    tripped = store.trip("demo", pin=None, actor="serve:error-rate", source="error-rate", reason="9 of 10 failed")
    assert tripped is not None and tripped.killed
    last = store.history("demo")[-1]
    assert (last.action, last.source, last.reason, last.actor) == ("kill", "error-rate", "9 of 10 failed",
                                                                     "serve:error-rate")
    assert deployment_audit(store) == ["deployment.kill", "deployment.kill", "deployment.kill", "deployment.revive",
                                       "deployment.kill"]


def test_refused_actions_change_nothing(store: DeploymentStore) -> None:
    store.adopt("demo", actor="serve")
    with pytest.raises(DeploymentConflict, match="stable version"):
        store.canary("demo", 2, 10, actor="ops")
    with pytest.raises(ConfigurationError, match="out of range"):
        store.canary("demo", 1, 0, actor="ops")
    with pytest.raises(NotFoundError, match="no version 7"):
        store.kill("demo", pin=7, actor="ops")
    with pytest.raises(DeploymentConflict, match="no candidate"):
        store.promote("demo", actor="ops")
    with pytest.raises(DeploymentConflict, match="not killed"):
        store.revive("demo", actor="ops")
    with pytest.raises(DeploymentConflict, match="abort"):
        store.abort("demo", actor="ops")
    with pytest.raises(NotFoundError):
        store.kill("demo", pin=2**63, actor="ops")  # beyond the integer column: refused before SQL
    for odd in ("demo\n", "de\0mo", "x" * 10_000, "Demo"):
        with pytest.raises(NotFoundError):
            store.state(odd)
    assert store.state("demo").revision == 1
    assert [e.action for e in store.history("demo")] == ["adopt"]
    assert deployment_audit(store) == ["deployment.adopt"]


def test_a_new_rollout_redraws_the_canary(store: DeploymentStore) -> None:
    store.kill("demo", actor="ops")
    store.revive("demo", actor="ops")
    first = store.canary("demo", 1, 10, actor="ops")
    store.abort("demo", actor="ops")
    second = store.canary("demo", 1, 10, actor="ops")
    assert second.rollout_id != first.rollout_id


def test_migration_0004_upgrades_a_0003_registry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir(parents=True)
    engine = create_registry_engine(settings.registry_url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    engine.dispose()
    registry = Registry.open(settings)
    with registry.engine.connect() as conn:
        assert {"deployment", "deployment_event"} <= set(inspect(conn).get_table_names())
        assert conn.execute(text("SELECT count(*) FROM deployment")).scalar_one() == 0
    publish_model(registry, make_publication())
    assert DeploymentStore(registry).kill("demo", actor="ops").revision == 1
    with registry.engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        assert "deployment" not in set(inspect(conn).get_table_names())
    registry.engine.dispose()
