"""Console actions over HTTP on a provisioned federation: enrol, rotate, revoke, withdraw consent, retrain refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coordinator.provisioning import SiteRegistry
from federation.bundle import read_bundle
from fedguard.console import full_sources
from lifecycle.governance.consent import ConsentStore
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.coordinator.federation_fixtures import Federation, make_federation
from tests.serving.console.fixtures import csrf_of, origin, sign_in


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    federation = make_federation(tmp_path)
    publish_model(federation.registry, make_publication())
    return federation


@pytest.fixture
def admin(fed: Federation) -> Iterator[TestClient]:
    app = create_app(fed.registry, ServingSettings(), console_sources=full_sources(fed.registry))
    with TestClient(app, base_url="http://testserver") as client:
        sign_in(client, create_key(fed.registry, "admin", "ops", actor="test").key)
        yield client


def _post(client: TestClient, path: str, **fields: str) -> object:
    token = csrf_of(client, "/console/sites")
    return client.post(path, data={"csrf_token": token, "confirm": "yes", **fields}, headers=origin(client))


def test_enrol_hands_the_bundle_over_once(admin: TestClient, fed: Federation, tmp_path: Path) -> None:
    answer = _post(admin, "/console/sites/enroll", name="st-marys")
    assert answer.status_code == 200  # type: ignore[attr-defined]
    assert answer.headers["content-disposition"] == 'attachment; filename="st-marys.bundle"'  # type: ignore[attr-defined]
    assert answer.headers["cache-control"] == "no-store"  # type: ignore[attr-defined]
    saved = tmp_path / "downloaded.bundle"
    saved.write_bytes(answer.content)  # type: ignore[attr-defined]
    saved.chmod(0o600)  # as docs/console.md tells the operator: a browser saves downloads readable by others
    assert read_bundle(saved).site == "st-marys"
    page = admin.get("/console/sites").text
    assert "st-marys" in page and "PRIVATE KEY" not in page
    assert not list(fed.home.rglob("st-marys.bundle"))  # the console kept no copy
    audit = admin.get("/console/audit", params={"q": "st-marys"}).text
    assert "apikey:" in audit


def test_rotate_and_revoke(admin: TestClient, fed: Federation) -> None:
    _post(admin, "/console/sites/enroll", name="northfield")
    first = SiteRegistry(fed.registry, fed.layout).sites()[0].cert_serial
    rotated = _post(admin, "/console/sites/northfield/rotate")
    assert rotated.status_code == 200  # type: ignore[attr-defined]
    assert SiteRegistry(fed.registry, fed.layout).sites()[0].cert_serial != first
    revoked = _post(admin, "/console/sites/northfield/revoke", reason="left the consortium")
    assert revoked.status_code == 200  # type: ignore[attr-defined]
    assert SiteRegistry(fed.registry, fed.layout).sites()[0].status != "active"


def test_consent_withdrawal_taints_the_lineage(admin: TestClient, fed: Federation) -> None:
    answer = _post(admin, "/console/consent/withdraw", site="site-0", scope="site", reason="patient group request")
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    assert [t.ref for t in ConsentStore(fed.registry).tainted("demo")] == ["demo:1"]
    assert "tainted" in admin.get("/console/consent").text


def test_a_retrain_of_a_clean_version_is_refused_with_the_cli_message(admin: TestClient, fed: Federation) -> None:
    from coordinator.retrain import plan
    from lifecycle.errors import FedguardError

    with pytest.raises(FedguardError) as refused:
        plan(fed.registry, "demo", 1)
    answer = _post(admin, "/console/models/demo/retrain", version="1")
    assert answer.status_code >= 400  # type: ignore[attr-defined]
    assert f"error: {refused.value}" in answer.text.replace("&#39;", "'").replace("&#34;", '"')  # type: ignore[attr-defined]


def test_a_registry_without_federation_shows_no_site(tmp_path: Path) -> None:
    from lifecycle.settings import Settings

    registry = Registry.open(Settings(home=tmp_path / "home"))
    assert full_sources(registry).sites.sites() == []  # type: ignore[union-attr]
