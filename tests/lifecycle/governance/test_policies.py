"""Policies in the registry: versioned, audited, validated before anything is stored (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.governance.policies import PolicyStore, current_policy, on_taint, required_approvals
from lifecycle.governance.policy import DEFAULT_POLICY, digest
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from tests.lifecycle.governance.sample import SAMPLE


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(backend_settings)
    yield opened
    opened.engine.dispose()


def _events(registry: Registry) -> list[tuple[str, str, dict[str, object]]]:
    with registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT action, subject, details_json FROM audit_event ORDER BY id")).all()
    return [(a, s, json.loads(d)) for a, s, d in rows]


def test_a_policy_is_declared_before_training_versioned_and_audited(registry: Registry) -> None:
    store = PolicyStore(registry)
    first = store.set("breast-cancer", SAMPLE, actor="cli:alice")
    assert (first.version, first.digest, first.changed, first.actor) == (1, digest(SAMPLE), True, "cli:alice")
    again = store.set("breast-cancer", SAMPLE, actor="cli:bob")
    assert (again.version, again.changed) == (1, False)  # the same document: nothing stored, nothing audited
    second = store.set("breast-cancer", "[production]\nmin-accuracy = 0.8\n", actor="cli:alice")
    assert second.version == 2
    assert _events(registry) == [
        ("model.created", "breast-cancer", {}),
        ("policy.set", "breast-cancer", {"version": 1, "digest": digest(SAMPLE)}),
        ("policy.set", "breast-cancer", {"version": 2, "digest": second.digest}),
    ]
    assert [r.version for r in store.history("breast-cancer")] == [1, 2]
    assert store.get("breast-cancer", 1).document == SAMPLE  # verbatim, comments and all
    current = store.current("breast-cancer")
    assert current is not None and current.policy.criteria("production") == (("min-accuracy", 0.8),)
    assert current_policy(registry, "breast-cancer").version == 2
    assert registry.verify_audit_chain() == 3


def test_a_bad_policy_stores_nothing(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="min-acuracy.*policy.toml"):
        PolicyStore(registry).set("demo", "[staging]\nmin-acuracy = 0.9\n", actor="t", source="policy.toml")
    with pytest.raises(ConfigurationError, match="invalid model name"):
        PolicyStore(registry).set("Bad Name", SAMPLE, actor="t")
    assert _events(registry) == []
    with pytest.raises(NotFoundError, match="no model named 'demo'"):
        PolicyStore(registry).current("demo")


def test_unknown_models_and_versions(registry: Registry) -> None:
    store = PolicyStore(registry)
    store.set("demo", SAMPLE, actor="t")
    with pytest.raises(NotFoundError, match="no policy version 4"):
        store.get("demo", 4)
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        store.history("ghost")
    assert current_policy(registry, "ghost") is DEFAULT_POLICY  # a first publication is under the default


def test_the_stages_and_consent_work_read_approvals_and_on_taint(registry: Registry) -> None:
    assert (required_approvals(registry, "demo", "production"), on_taint(registry, "demo")) == (0, "block")
    PolicyStore(registry).set("demo", SAMPLE, actor="t")
    assert required_approvals(registry, "demo", "production") == 2
    assert required_approvals(registry, "demo", "staging") == 0
    assert on_taint(registry, "demo") == "replace"
