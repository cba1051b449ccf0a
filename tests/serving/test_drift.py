"""Drift monitoring through the real app: in-distribution traffic stays quiet, shifted traffic alerts."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifecycle.errors import ConfigurationError, StateError
from lifecycle.registry import Registry
from serving.app import create_app
from serving.drift import DriftReport
from serving.guards.keys import CreatedKey
from serving.settings import ServingSettings, build_settings
from tests.serving.conftest import bearer
from tests.serving.trained import publish_trained, sample

SETTINGS = ServingSettings(max_instances=200, max_body_bytes=1 << 20, quota_rate=1e6, quota_burst=10**6,
                           drift_window=1000, drift_min_instances=200, extraction_guard=False)


@pytest.fixture
def trained_client(registry: Registry) -> Iterator[TestClient]:
    publish_trained(registry)
    with TestClient(create_app(registry, SETTINGS)) as client:
        yield client


def _send(client: TestClient, key: CreatedKey, x: np.ndarray, batch: int = 100) -> None:
    for start in range(0, len(x), batch):
        response = client.post("/v1/models/demo/predict", headers=bearer(key),
                               json={"instances": x[start:start + batch].tolist()})
        assert response.status_code == 200, response.text


def _drift(client: TestClient, key: CreatedKey) -> dict[str, object]:
    response = client.get("/v1/models/demo/drift", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_shifted_traffic_raises_the_alert_in_log_metrics_endpoint_and_callbacks(
    trained_client: TestClient, predict_key: CreatedKey, admin_key: CreatedKey, caplog: pytest.LogCaptureFixture
) -> None:
    state = trained_client.app.state.fedguard  # type: ignore[attr-defined]
    seen: list[tuple[str, DriftReport]] = []
    state.drift.on_drift_alert.append(lambda model, report: seen.append((model, report)))
    assert _drift(trained_client, admin_key)["status"] == "warming-up"

    _send(trained_client, predict_key, sample(600, seed=10)[0])
    quiet = _drift(trained_client, admin_key)
    assert (quiet["status"], quiet["alert"], quiet["window"], quiet["drifted"]) == ("ok", False, 600, [])
    assert seen == [] and "drift alert" not in caplog.text

    shift = np.array([0.0, 0.0, 0.0, 4.0])  # f3 moves by about 1.8 of its standard deviations
    with caplog.at_level(logging.WARNING, logger="fedguard.serving"):
        _send(trained_client, predict_key, sample(1000, seed=11, shift=shift)[0])
    body = _drift(trained_client, admin_key)
    assert body["status"] == "alert" and body["alert"] is True and body["alerts"] == 1
    assert "f3" in body["drifted"] and "f0" not in body["drifted"]  # type: ignore[operator]
    f3 = next(f for f in body["features"] if f["name"] == "f3")  # type: ignore[union-attr, index]
    assert f3["psi"] > 0.25 and f3["ks"] > 0.2 and f3["alert"] is True
    assert [m for m, _ in seen] == ["demo"] and "f3" in seen[0][1].drifted  # called once, on the transition
    alert_lines = [r for r in caplog.records if "drift alert on model demo" in r.getMessage()]
    assert len(alert_lines) == 1 and alert_lines[0].levelno == logging.WARNING and "f3" in alert_lines[0].getMessage()

    metrics = trained_client.get("/metrics").text
    assert 'fedguard_drift_alerts_total{model="demo"} 1.0' in metrics
    assert 'fedguard_drift_alert{model="demo"} 1.0' in metrics
    psi_line = next(line for line in metrics.splitlines() if line.startswith('fedguard_drift_psi{feature="f3"'))
    assert float(psi_line.split()[-1]) == pytest.approx(f3["psi"])
    assert 'fedguard_drift_ks{feature="<prediction>",model="demo"}' in metrics

    _send(trained_client, predict_key, sample(1000, seed=12)[0])  # back to normal: the alert clears
    cleared = _drift(trained_client, admin_key)
    assert cleared["status"] == "ok" and 900 <= cleared["window"] <= 1000  # type: ignore[operator]  # bounded
    assert 'fedguard_drift_alert{model="demo"} 0.0' in trained_client.get("/metrics").text


def test_the_drift_endpoint_needs_admin_and_a_served_model(
    trained_client: TestClient, predict_key: CreatedKey, admin_key: CreatedKey
) -> None:
    assert trained_client.get("/v1/models/demo/drift").status_code == 401
    assert trained_client.get("/v1/models/demo/drift", headers=bearer(predict_key)).status_code == 403
    missing = trained_client.get("/v1/models/nope/drift", headers=bearer(admin_key))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_model_without_reference_is_served_and_reported_as_such(
    client: TestClient, predict_key: CreatedKey, admin_key: CreatedKey
) -> None:
    assert client.post("/v1/models/demo/predict", headers=bearer(predict_key),
                       json={"instances": [[0.1, 1.2, -0.3, 4.0]]}).status_code == 200
    body = client.get("/v1/models/demo/drift", headers=bearer(admin_key)).json()
    assert (body["status"], body["alert"], body["features"], body["prediction"]) == ("no-reference", False, [], None)


def test_a_failing_callback_does_not_fail_the_request(
    trained_client: TestClient, predict_key: CreatedKey, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(model: str, report: DriftReport) -> None:
        raise RuntimeError("kill switch unreachable")

    trained_client.app.state.fedguard.drift.on_drift_alert.append(broken)  # type: ignore[attr-defined]
    _send(trained_client, predict_key, sample(300, seed=13, shift=np.array([5.0, 0.0, 0.0, 0.0]))[0])
    assert "drift alert callback" in caplog.text


def test_thresholds_come_from_the_environment_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_DRIFT_PSI_THRESHOLD", "0.1")
    monkeypatch.setenv("FEDGUARD_SERVE_EXTRACTION_GUARD", "false")
    settings = build_settings()
    assert settings.drift_psi_threshold == 0.1 and settings.extraction_guard is False
    monkeypatch.setenv("FEDGUARD_SERVE_DRIFT_KS_THRESHOLD", "1.5")
    with pytest.raises(ConfigurationError, match="drift_ks_threshold"):
        build_settings()


def test_a_reference_for_other_features_stops_the_server(registry: Registry) -> None:
    from dataclasses import replace

    from lifecycle.packaging import publish_model
    from tests.conftest import make_publication
    from tests.serving.trained import _trained

    reference = dict(_trained()[1])
    reference["features"] = ["a", "b", "c", "d"]
    publish_model(registry, replace(make_publication(), reference=reference))
    with pytest.raises(StateError, match="reference statistics name other features"):
        create_app(registry, SETTINGS)


def test_a_drift_alert_trips_the_kill_switch_when_configured(
    registry: Registry, predict_key: CreatedKey, admin_key: CreatedKey
) -> None:
    publish_trained(registry)
    settings = SETTINGS.model_copy(update={"kill_on_drift": True})
    with TestClient(create_app(registry, settings)) as client:
        _send(client, predict_key, sample(600, seed=10)[0])
        assert client.app.state.fedguard.deployments.store.state("demo").killed is False  # type: ignore[attr-defined]
        shifted = sample(1000, seed=11, shift=np.array([0.0, 0.0, 0.0, 4.0]))[0]
        refused = 0
        for start in range(0, len(shifted), 100):
            response = client.post("/v1/models/demo/predict", headers=bearer(predict_key),
                                   json={"instances": shifted[start:start + 100].tolist()})
            refused += response.status_code == 503
        assert refused > 0  # once the alert fired, the model was switched off
        history = client.get("/v1/admin/models/demo/deployments", headers=bearer(admin_key)).json()
        assert "drift" in str(history)
