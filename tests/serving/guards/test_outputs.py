"""Hardened outputs: labels by default; top-k and probabilities only when configured, rounded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.artifacts import ONNX_NAME
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey
from serving.guards.outputs import shape_output
from serving.models import load_served_models
from serving.settings import OutputPolicy, ServingSettings, build_settings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
INSTANCES = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0], [0.01, 0.02, -0.03, 0.04]]
LABELS = ["no", "yes"]
Serve = Callable[..., TestClient]


def expected_probabilities(published: VersionRecord, instances: list[list[float]]) -> np.ndarray:
    """The signed ONNX export run offline with its own ONNX Runtime session, softmax in float64."""
    session = ort.InferenceSession(str(published.artifact.model_dir / ONNX_NAME), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.asarray(instances, dtype=np.float32)})[0].astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


@pytest.fixture
def serve(registry: Registry, published: VersionRecord) -> Iterator[Serve]:
    """Call it with an output policy for 'demo'; returns a TestClient for that configuration."""
    clients: list[TestClient] = []

    def make(**policy: object) -> TestClient:
        outputs = {"demo": OutputPolicy.model_validate(policy)}
        settings = ServingSettings(max_instances=8, max_body_bytes=4096, outputs=outputs)
        client = TestClient(create_app(registry, settings))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def predict(client: TestClient, key: CreatedKey) -> dict[str, Any]:
    response = client.post(PREDICT, json={"instances": INSTANCES}, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_default_is_labels_only(client: TestClient, predict_key: CreatedKey, published: VersionRecord) -> None:
    body = predict(client, predict_key)
    assert set(body) == {"predictions", "model", "version"}
    expected = expected_probabilities(published, INSTANCES).argmax(axis=1).tolist()
    assert body["predictions"] == [LABELS[c] for c in expected]


def test_label_mode_configured_explicitly_sends_no_scores(serve: Serve, predict_key: CreatedKey) -> None:
    assert set(predict(serve(output_mode="label", precision=None), predict_key)) == {"predictions", "model", "version"}


def test_top_k_is_ranked_and_rounded(serve: Serve, predict_key: CreatedKey, published: VersionRecord) -> None:
    body = predict(serve(output_mode="top-k", top_k=1, precision=3), predict_key)
    exact = expected_probabilities(published, INSTANCES)
    assert set(body) == {"predictions", "model", "version", "top_k"}
    for row, probs, label in zip(body["top_k"], exact, body["predictions"], strict=True):
        assert len(row) == 1 and row[0]["label"] == label
        assert row[0]["score"] == round(float(probs.max()), 3)
    body = predict(serve(output_mode="top-k", top_k=2, precision=2), predict_key)
    for row, probs in zip(body["top_k"], exact, strict=True):
        assert [entry["score"] for entry in row] == sorted((round(float(p), 2) for p in probs), reverse=True)
        assert sorted(entry["label"] for entry in row) == LABELS


def test_probabilities_are_rounded_to_the_configured_precision(
    serve: Serve, predict_key: CreatedKey, published: VersionRecord
) -> None:
    body = predict(serve(output_mode="probabilities", precision=2), predict_key)
    exact = expected_probabilities(published, INSTANCES)
    assert body["classes"] == LABELS
    assert body["probabilities"] == [[round(float(p), 2) for p in row] for row in exact]
    for row in body["probabilities"]:
        assert all(len(repr(p).split(".")[1]) <= 2 for p in row)


def test_default_precision_is_two_decimals(serve: Serve, predict_key: CreatedKey, published: VersionRecord) -> None:
    body = predict(serve(output_mode="probabilities"), predict_key)
    exact = expected_probabilities(published, INSTANCES)
    assert body["probabilities"] == [[round(float(p), 2) for p in row] for row in exact]


def test_precision_zero_sends_only_zeros_and_ones(serve: Serve, predict_key: CreatedKey) -> None:
    body = predict(serve(output_mode="probabilities", precision=0), predict_key)
    assert {p for row in body["probabilities"] for p in row} <= {0.0, 1.0}


def test_full_precision_only_when_configured(serve: Serve, predict_key: CreatedKey, published: VersionRecord) -> None:
    body = predict(serve(output_mode="probabilities", precision=None), predict_key)
    exact = expected_probabilities(published, INSTANCES)
    np.testing.assert_allclose(np.asarray(body["probabilities"], dtype=np.float64), exact, rtol=0, atol=1e-15)
    assert any(len(repr(p).split(".")[1]) > 8 for row in body["probabilities"] for p in row)


def test_other_models_keep_labels_only(registry: Registry, published: VersionRecord, predict_key: CreatedKey) -> None:
    settings = ServingSettings(outputs={"another": OutputPolicy(output_mode="probabilities")})
    with TestClient(create_app(registry, settings)) as client:
        assert set(predict(client, predict_key)) == {"predictions", "model", "version"}


def test_top_k_larger_than_the_classes_stops_the_server(registry: Registry, published: VersionRecord) -> None:
    settings = ServingSettings(outputs={"demo": OutputPolicy(output_mode="top-k", top_k=3)})
    with pytest.raises(ConfigurationError, match="top_k is 3 but model 'demo' has 2 classes"):
        create_app(registry, settings)


def test_outputs_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_OUTPUTS", json.dumps({"demo": {"output_mode": "top-k", "top_k": 2}}))
    policy = build_settings().output_policy("demo")
    assert (policy.output_mode, policy.top_k, policy.precision) == ("top-k", 2, 2)
    assert build_settings().output_policy("other") == OutputPolicy()


@pytest.mark.parametrize(
    "value",
    ['{"demo": {"output_mode": "logits"}}', '{"demo": {"top_k": 0}}', '{"demo": {"precision": 9}}',
     '{"demo": {"precison": 3}}'],
)
def test_bad_output_settings_are_configuration_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_OUTPUTS", value)
    with pytest.raises(ConfigurationError, match="invalid serving setting"):
        build_settings()


def test_openapi_documents_the_score_fields(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    props = schemas["PredictResponse"]["properties"]
    assert {"predictions", "top_k", "classes", "probabilities"} <= set(props)
    assert set(schemas["ScoredLabel"]["properties"]) == {"label", "score"}
    assert len(schemas["PredictResponse"]["examples"]) == 3


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(st.floats(-50, 50, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=5),
    precision=st.integers(0, 6),
)
def test_rounding_error_is_bounded_and_labels_are_unchanged(
    registry: Registry, published: VersionRecord, rows: list[list[float]], precision: int
) -> None:
    model = load_served_models(registry)["demo"]
    batch = np.asarray(rows, dtype=np.float32)
    exact = model.probabilities(batch)
    out = shape_output(model, batch, OutputPolicy(output_mode="probabilities", precision=precision))
    assert out["predictions"] == model.predict(batch)
    got = np.asarray(out["probabilities"], dtype=np.float64)
    assert float(np.abs(got - exact).max()) <= 0.5 * 10**-precision + 1e-12
    top = shape_output(model, batch, OutputPolicy(output_mode="top-k", top_k=2, precision=precision))
    assert all(row[0]["score"] >= row[1]["score"] for row in top["top_k"])
