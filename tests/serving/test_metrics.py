"""/metrics and the access log: counters move, the text parses, nothing secret leaks."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.cli import uvicorn_options
from serving.guards.keys import CreatedKey
from serving.settings import ServingSettings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
SECRET_VALUE = 1234.5678
GOOD = {"instances": [[SECRET_VALUE, -1.0, 2.0, 0.0]]}
NOW = 1_800_000_000.0


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                   route: str, model: str, status: str) -> float:
    return values.get(("fedguard_requests_total", (("model", model), ("route", route), ("status", status))), 0.0)


def test_metrics_need_no_key_and_count_requests(client: TestClient, predict_key: CreatedKey) -> None:
    before = samples(client)
    assert before[("fedguard_models_served", ())] == 1.0
    assert requests_total(before, PREDICT.replace("demo", "{name}"), "demo", "200") == 0.0
    for _ in range(3):
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
    assert client.post(PREDICT, json=GOOD).status_code == 401
    assert client.post("/v1/models/nope/predict", json=GOOD, headers=bearer(predict_key)).status_code == 404
    after = samples(client)
    template = "/v1/models/{name}/predict"
    assert requests_total(after, template, "demo", "200") == 3.0
    assert requests_total(after, template, "demo", "401") == 1.0
    assert requests_total(after, template, "", "404") == 1.0  # an unserved name never becomes a label
    assert after[("fedguard_predict_duration_seconds_count", (("model", "demo"),))] == 4.0
    assert requests_total(after, "/metrics", "", "200") >= 1.0


def test_unmatched_paths_and_oversized_bodies_are_counted_without_their_path(
    client: TestClient, predict_key: CreatedKey
) -> None:
    assert client.get("/no/such/secret-path").status_code == 404
    big = {"instances": [[1.0, 2.0, 3.0, 4.0]] * 400}
    assert client.post(PREDICT, json=big, headers=bearer(predict_key)).status_code == 413
    text = client.get("/metrics").text
    values = samples(client)
    assert requests_total(values, "<unmatched>", "", "404") == 1.0
    assert requests_total(values, "/v1/models/{name}/predict", "demo", "413") == 1.0
    assert "secret-path" not in text


def test_quota_refusals_are_counted(registry: Registry, published: VersionRecord, predict_key: CreatedKey) -> None:
    settings = ServingSettings(max_instances=8, max_body_bytes=4096, quota_rate=0.25, quota_burst=1)
    with TestClient(create_app(registry, settings, clock=lambda: NOW)) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 429
        values = samples(client)
    assert values[("fedguard_quota_refusals_total", (("model", "demo"),))] == 1.0
    assert requests_total(values, "/v1/models/{name}/predict", "demo", "429") == 1.0


def test_each_app_has_its_own_registry(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, serving_settings: ServingSettings
) -> None:
    with TestClient(create_app(registry, serving_settings)) as first, \
            TestClient(create_app(registry, serving_settings)) as second:
        first.post(PREDICT, json=GOOD, headers=bearer(predict_key))
        assert requests_total(samples(first), "/v1/models/{name}/predict", "demo", "200") == 1.0
        assert requests_total(samples(second), "/v1/models/{name}/predict", "demo", "200") == 0.0


def test_access_log_has_one_line_per_request_and_no_secrets(
    client: TestClient, predict_key: CreatedKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fedguard.serving.access"):
        client.post(PREDICT, json=GOOD, headers=bearer(predict_key))
        client.post(PREDICT, json=GOOD, headers=bearer("fgk_0123456789abcdef_" + "x" * 43))
        client.get("/metrics")
    lines = [r.getMessage() for r in caplog.records if r.name == "fedguard.serving.access"]
    assert len(lines) == 3
    assert lines[0].startswith("POST /v1/models/{name}/predict 200 ")
    assert lines[0].endswith(f"ms key={predict_key.info.key_id}")
    assert lines[1].startswith("POST /v1/models/{name}/predict 401 ") and lines[1].endswith("key=-")
    assert lines[2].startswith("GET /metrics 200 ")
    metrics_text = client.get("/metrics").text
    for text in [*lines, metrics_text]:
        assert predict_key.key not in text and predict_key.key.split("_", 2)[2] not in text
        assert str(SECRET_VALUE) not in text and "x" * 43 not in text
    assert predict_key.info.key_id not in metrics_text


def test_serve_turns_uvicorn_raw_access_log_off(serving_settings: ServingSettings) -> None:
    assert uvicorn_options(serving_settings)["access_log"] is False
