"""Publish → edit the registry with SQL → the lineage check raises naming the field (both backends)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from lifecycle.bom import read_bom, read_lineage
from lifecycle.packaging import publish_model
from lifecycle.registry import LineageMismatch, Registry, VersionRecord, check_lineage
from lifecycle.settings import Settings
from tests.conftest import make_publication


@pytest.fixture
def opened(backend_settings: Settings) -> Iterator[tuple[Registry, VersionRecord]]:
    registry = Registry.open(backend_settings)
    version = publish_model(registry, make_publication())
    yield registry, version
    registry.engine.dispose()


def _check(registry: Registry, ref: str) -> dict[str, object]:
    record = registry.resolve(ref)
    return check_lineage(record, read_bom(record.artifact.model_dir))


def test_a_fresh_version_agrees(opened: tuple[Registry, VersionRecord]) -> None:
    registry, version = opened
    assert _check(registry, version.ref) == {"verified": True, "sites": 2, "metrics": ["accuracy"]}


_SITE = "site_participation.{} of site '{}'"
TAMPERS = {
    _SITE.format("epsilon", "site-0"): "UPDATE site_participation SET epsilon = 0.01 WHERE site = 'site-0'",
    _SITE.format("delta", "site-1"): "UPDATE site_participation SET delta = NULL WHERE site = 'site-1'",
    _SITE.format("num_examples", "site-0"): "UPDATE site_participation SET num_examples = 9000 WHERE site = 'site-0'",
    _SITE.format("data_manifest", "site-1"): f"UPDATE site_participation SET data_manifest = '{'f' * 64}' "
                                             "WHERE site = 'site-1'",
    _SITE.format("rounds_participated", "site-1"): "UPDATE site_participation SET rounds_participated = 7 "
                                                   "WHERE site = 'site-1'",
    "site_participation.site (the sites)": "DELETE FROM site_participation WHERE site = 'site-1'",
    "model_version.metrics.accuracy": """UPDATE model_version SET metrics_json = '{"accuracy": 0.99}'""",
    "model_version.metrics.auc": """UPDATE model_version SET metrics_json = '{"accuracy": 0.5, "auc": 0.9}'""",
    "model_version.watermark.scheme": """UPDATE model_version SET watermark_json = '{"scheme": "trigger-set"}'""",
    "training_run.rounds": "UPDATE training_run SET rounds = 50",
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_an_edited_registry_is_caught_naming_the_field(field: str, opened: tuple[Registry, VersionRecord]) -> None:
    registry, version = opened
    with registry.engine.begin() as conn:
        conn.execute(text(TAMPERS[field]))
    with pytest.raises(LineageMismatch) as caught:
        _check(registry, version.ref)
    assert caught.value.field == field
    assert field in str(caught.value) and "restore the registry" in str(caught.value)
    assert caught.value.exit_code == 5


def test_a_bom_of_the_previous_format_is_compared_too(opened: tuple[Registry, VersionRecord]) -> None:
    registry, version = opened
    lineage = read_lineage(read_bom(version.artifact.model_dir))
    legacy = {"bomFormat": "CycloneDX", "specVersion": "1.6", "fedguard": lineage}
    assert check_lineage(version, legacy)["verified"] is True
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE site_participation SET epsilon = 0.01 WHERE site = 'site-1'"))
    with pytest.raises(LineageMismatch) as caught:
        check_lineage(registry.resolve(version.ref), legacy)
    assert caught.value.field == "site_participation.epsilon of site 'site-1'"
