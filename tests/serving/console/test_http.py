"""The console over HTTP: sign-in, sessions, refusals (no session, predict key, CSRF, cross-site), pages, actions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fedguard.console import full_sources
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from serving.app import create_app
from serving.console.session import COOKIE
from serving.guards.keys import CreatedKey, create_key, revoke_key
from serving.settings import ServingSettings
from tests.serving.console.fixtures import charge_sites, csrf_of, origin, sign_in, write_run


@pytest.fixture
def console(registry: Registry, published: VersionRecord) -> Iterator[TestClient]:
    write_run(registry, "sim-20261205-a", 3, done=published.ref)
    charge_sites(registry, "sim-20261205-a")
    app = create_app(registry, ServingSettings(max_instances=8), console_sources=full_sources(registry))
    with TestClient(app, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def viewer_key(registry: Registry) -> CreatedKey:
    return create_key(registry, "viewer", "compliance", actor="test")


def test_pages_need_a_session(console: TestClient) -> None:
    for page in ("/console/runs", "/console/privacy", "/console/models", "/console/audit", "/console/sites"):
        answer = console.get(page, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/signin")


def test_sign_in_sets_a_strict_http_only_cookie(console: TestClient, admin_key: CreatedKey) -> None:
    answer = sign_in(console, admin_key.key)
    assert answer.status_code == 200  # followed to the runs page
    cookie = next(h for h in answer.history[0].headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; TLS sets it (test_cookie_is_secure_over_tls)
    assert admin_key.key not in cookie


def test_cookie_is_secure_over_tls(registry: Registry, published: VersionRecord, admin_key: CreatedKey) -> None:
    app = create_app(registry, ServingSettings())
    with TestClient(app, base_url="https://testserver") as client:
        answer = client.post("/console/signin", data={"api_key": admin_key.key},
                             headers={"Origin": "https://testserver"}, follow_redirects=False)
    assert "Secure" in answer.headers["set-cookie"]


def test_every_page_renders_for_a_viewer(console: TestClient, viewer_key: CreatedKey,
                                         published: VersionRecord) -> None:
    sign_in(console, viewer_key.key)
    runs = console.get("/console/runs")
    assert "sim-20261205-a" in runs.text and published.ref in runs.text
    run = console.get("/console/runs/sim-20261205-a")
    assert run.status_code == 200 and "<svg" in run.text and "site-c" in run.text
    assert run.text.count(" in this run</text>") == 3 and "(no cap)" not in run.text  # a run's share has no cap
    privacy = console.get("/console/privacy")
    assert privacy.status_code == 200 and "site-a" in privacy.text and "1.1" in privacy.text
    model = console.get(f"/console/models/{published.name}")
    assert model.status_code == 200 and "Lineage" in model.text
    assert 'action="/console/models/demo/kill"' not in model.text  # a viewer sees no action
    assert console.get("/console/audit").status_code == 200
    assert console.get("/console/consent").status_code == 200
    assert console.get("/console/sites").status_code == 200


def test_a_predict_key_cannot_sign_in(console: TestClient, predict_key: CreatedKey) -> None:
    answer = sign_in(console, predict_key.key)
    assert answer.status_code == 403
    assert COOKIE not in answer.cookies


def test_a_wrong_key_cannot_sign_in(console: TestClient) -> None:
    assert sign_in(console, "fgk_0123456789abcdef_" + "x" * 43).status_code == 401


def test_a_viewer_cannot_act(console: TestClient, viewer_key: CreatedKey, registry: Registry) -> None:
    sign_in(console, viewer_key.key)
    token = csrf_of(console, "/console/runs")
    answer = console.post("/console/models/demo/kill", data={"csrf_token": token, "confirm": "yes"},
                          headers=origin(console))
    assert answer.status_code == 403
    assert not DeploymentStore(registry).state("demo").killed


def test_missing_csrf_token_is_refused(console: TestClient, admin_key: CreatedKey, registry: Registry) -> None:
    sign_in(console, admin_key.key)
    answer = console.post("/console/models/demo/kill", data={"confirm": "yes"}, headers=origin(console))
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert not DeploymentStore(registry).state("demo").killed


def test_cross_site_post_is_refused(console: TestClient, admin_key: CreatedKey, registry: Registry) -> None:
    sign_in(console, admin_key.key)
    token = csrf_of(console, "/console/runs")
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                    {"Origin": "null"}):
        answer = console.post("/console/models/demo/kill", data={"csrf_token": token, "confirm": "yes"},
                              headers=headers)
        assert answer.status_code == 403, headers
    assert not DeploymentStore(registry).state("demo").killed


def test_unconfirmed_action_is_refused(console: TestClient, admin_key: CreatedKey, registry: Registry) -> None:
    sign_in(console, admin_key.key)
    token = csrf_of(console, "/console/runs")
    answer = console.post("/console/models/demo/kill", data={"csrf_token": token}, headers=origin(console))
    assert answer.status_code == 400 and "confirm" in answer.text
    assert not DeploymentStore(registry).state("demo").killed


def test_kill_and_revive_are_audited_with_the_key(console: TestClient, admin_key: CreatedKey,
                                                  registry: Registry) -> None:
    sign_in(console, admin_key.key)
    token = csrf_of(console, "/console/runs")
    answer = console.post("/console/models/demo/kill", data={"csrf_token": token, "confirm": "yes", "env": "default",
                                                             "reason": "bad answers"}, headers=origin(console))
    assert answer.status_code == 200 and "killed demo" in answer.text
    assert 'id="killed-banner"' in console.get("/console/audit").text
    assert DeploymentStore(registry).state("demo").killed
    audit = console.get("/console/audit", params={"q": admin_key.info.key_id}).text
    assert "deployment.kill" in audit or "kill" in audit
    console.post("/console/models/demo/revive", data={"csrf_token": token, "confirm": "yes"}, headers=origin(console))
    assert not DeploymentStore(registry).state("demo").killed
    assert 'id="killed-banner"' not in console.get("/console/audit").text


def test_a_revoked_key_ends_the_session(console: TestClient, admin_key: CreatedKey, registry: Registry) -> None:
    sign_in(console, admin_key.key)
    assert console.get("/console/runs", follow_redirects=False).status_code == 200
    revoke_key(registry, admin_key.info.key_id, actor="test")
    assert console.get("/console/runs", follow_redirects=False).status_code == 303


def test_a_tampered_cookie_is_refused(console: TestClient, admin_key: CreatedKey) -> None:
    sign_in(console, admin_key.key)
    value = console.cookies[COOKIE]
    body, mac = value.split(".")
    console.cookies.set(COOKIE, body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac, path="/console")
    assert console.get("/console/runs", follow_redirects=False).status_code == 303


def test_walk_back_report_downloads(console: TestClient, viewer_key: CreatedKey) -> None:
    sign_in(console, viewer_key.key)
    answer = console.get("/console/audit/report", params={"model": "demo", "format": "json"})
    assert answer.status_code == 200
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.json()["question"]["model"] == "demo"
    assert answer.headers["x-report-sha256"] in console.get("/console/audit").text


def test_the_console_serves_no_cdn_asset(console: TestClient, viewer_key: CreatedKey) -> None:
    sign_in(console, viewer_key.key)
    page = console.get("/console/runs").text
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert console.get("/console/static/htmx.min.js").status_code == 200


def test_a_deployed_run_is_listed_with_its_job(console: TestClient, viewer_key: CreatedKey,
                                                registry: Registry) -> None:
    folder = write_run(registry, "3f9a1c2b7d4e", 2, total=3)  # `fedguard run launch` names a run by a hex id
    (folder / "job.toml").write_text('num-server-rounds = 3\nsecure-aggregation = "secagg+"\nnum-sites = 3\n')
    sign_in(console, viewer_key.key)
    row = next(line for line in console.get("/console/runs").text.split("<tr>") if "3f9a1c2b7d4e" in line)
    assert "<td>deployment</td>" in row and ">running<" in row and '<td class="num">2/3</td>' in row
    page = console.get("/console/runs/3f9a1c2b7d4e").text
    assert "<code>secure-aggregation</code></td><td class=\"mono\">secagg+" in page
    assert "starting the Flower simulation" not in page  # the stage line before round 1 is stale by round 2
