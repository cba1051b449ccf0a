"""The HTTP API through FastAPI's TestClient: auth, validation, predictions, error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from lifecycle.artifacts import WEIGHTS_NAME, load_model
from lifecycle.errors import SignatureError
from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey, authenticate, create_key, revoke_key
from serving.settings import ServingSettings
from tests.serving.conftest import bearer
from tests.serving.test_models import tamper

PREDICT = "/v1/models/demo/predict"
NOT_A_NUMBER = "instance 0 value 1 (feature 'f1') is not a number; send JSON numbers only"
GOOD = {"instances": [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]}


def error_of(response: object) -> dict[str, str]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]  # type: ignore[no-any-return]


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert PREDICT.replace("demo", "{name}") in spec["paths"]
    assert spec["components"]["securitySchemes"]["fedguard API key"]["scheme"] == "bearer"


def test_predict_returns_labels_matching_the_offline_model(
    client: TestClient, predict_key: CreatedKey, published: VersionRecord
) -> None:
    response = client.post(PREDICT, json=GOOD, headers=bearer(predict_key))
    assert response.status_code == 200
    module, _ = load_model(published.artifact.model_dir)
    with torch.no_grad():
        classes = module(torch.tensor(GOOD["instances"])).argmax(dim=1).tolist()
    assert response.json() == {"predictions": [("no", "yes")[c] for c in classes], "model": "demo", "version": 1}


def test_admin_key_may_predict(client: TestClient, admin_key: CreatedKey) -> None:
    assert client.post(PREDICT, json=GOOD, headers=bearer(admin_key)).status_code == 200


def test_list_models(client: TestClient, predict_key: CreatedKey) -> None:
    response = client.get("/v1/models", headers=bearer(predict_key))
    assert response.json() == {
        "models": [{"name": "demo", "version": 1, "num_features": 4, "features": ["f0", "f1", "f2", "f3"]}]
    }
    assert client.get("/v1/models").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer fgk_0123456789abcdef_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["missing", "unknown", "malformed", "basic"],
)
def test_401_without_a_valid_key(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(PREDICT, json=GOOD, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthorized"


def test_401_hides_why_and_never_echoes_the_key(client: TestClient, predict_key: CreatedKey) -> None:
    wrong = predict_key.key[:-4] + "AAAA"
    response = client.post(PREDICT, json=GOOD, headers=bearer(wrong))
    assert response.status_code == 401
    assert predict_key.info.key_id not in response.text and wrong not in response.text


def test_auth_is_checked_before_the_body(client: TestClient) -> None:
    assert client.post(PREDICT, json={"instances": [["x"]]}).status_code == 401


def test_revoked_key_is_refused_at_once_without_the_key_cache(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    with TestClient(create_app(registry, ServingSettings(auth_cache_seconds=0))) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        revoke_key(registry, predict_key.info.key_id)
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 401


def test_403_for_a_predict_key_on_an_admin_route(client: TestClient, predict_key: CreatedKey) -> None:
    response = client.post(f"/v1/admin/keys/{predict_key.info.key_id}/revoke", headers=bearer(predict_key))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert error_of(response) == {"code": "forbidden", "message": "this API key lacks the 'admin' scope"}


def test_admin_key_revokes_through_the_api(
    client: TestClient, registry: Registry, admin_key: CreatedKey, predict_key: CreatedKey
) -> None:
    response = client.post(f"/v1/admin/keys/{predict_key.info.key_id}/revoke", headers=bearer(admin_key))
    assert response.json() == {"key_id": predict_key.info.key_id, "revoked": True}
    assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 401
    assert client.post("/v1/admin/keys/0123456789abcdef/revoke", headers=bearer(admin_key)).status_code == 404
    assert client.post(f"/v1/admin/keys/{predict_key.key}/revoke", headers=bearer(admin_key)).status_code == 404
    assert authenticate(registry, admin_key.key).key_id == admin_key.info.key_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0]]},
         "instance 1 has 3 values; the model expects 4 (features: f0, f1, f2, f3)"),
        ({"instances": []}, "'instances' is empty; send at least one instance"),
        ({"instances": [[1.0, 2.0, 3.0, 4.0]] * 9}, "9 instances in one request; the limit is 8: split the batch"),
        ({"instances": [[1.0, "2", 3.0, 4.0]]}, NOT_A_NUMBER),
        ({"instances": [[1.0, True, 3.0, 4.0]]}, NOT_A_NUMBER),
        ({"instances": [[1.0, None, 3.0, 4.0]]}, NOT_A_NUMBER),
        ({"instances": [1.0, 2.0]}, "instance 0 is not a list of numbers"),
        ({"instances": "all"}, "'instances' must be a list of lists of numbers"),
        ({"instances": [[1.0, 2.0, 3.0, 4.0]], "scores": True},
         'unexpected field in the body; send only {"instances": [[...], ...]}'),
        ({"rows": [[1.0, 2.0, 3.0, 4.0]]}, 'the body lacks \'instances\'; send {"instances": [[...], ...]}'),
    ],
    ids=["count", "empty", "too-many", "string", "bool", "null", "flat", "not-a-list", "extra-field", "missing"],
)
def test_422_names_the_problem(client: TestClient, predict_key: CreatedKey, body: object, message: str) -> None:
    response = client.post(PREDICT, json=body, headers=bearer(predict_key))
    assert response.status_code == 422
    assert error_of(response) == {"code": "invalid_input", "message": message}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"instances": [[1.0, NaN, 3.0, 4.0]]}', "instance 0 value 1 (feature 'f1') is not finite"),
        (b'{"instances": [[1.0, 2.0, Infinity, 4.0]]}', "instance 0 value 2 (feature 'f2') is not finite"),
        (b'{"instances": [[1.0, 2.0, 3.0, 1e300]]}', "instance 0 value 3 (feature 'f3') is outside the float32 range"),
        (b'{"instances": [[1.0, 2.0', "the body is not valid JSON"),
    ],
    ids=["nan", "inf", "float32-overflow", "truncated"],
)
def test_422_for_non_finite_or_broken_json(
    client: TestClient, predict_key: CreatedKey, raw: bytes, message: str
) -> None:
    headers = {**bearer(predict_key), "Content-Type": "application/json"}
    response = client.post(PREDICT, content=raw, headers=headers)
    assert response.status_code == 422
    assert error_of(response)["message"].startswith(message)


def test_422_without_json_content_type(client: TestClient, predict_key: CreatedKey) -> None:
    response = client.post(PREDICT, content=json.dumps(GOOD).encode(), headers=bearer(predict_key))
    assert response.status_code == 422 and "application/json" in error_of(response)["message"]


def test_404_for_an_unknown_model(client: TestClient, predict_key: CreatedKey) -> None:
    response = client.post("/v1/models/<script>/predict", json=GOOD, headers=bearer(predict_key))
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found" and "<script>" not in response.text


def test_404_for_an_unknown_route_keeps_the_error_shape(client: TestClient) -> None:
    assert error_of(client.get("/v2/nothing"))["code"] == "not_found"


def test_413_for_a_body_over_the_limit(client: TestClient, predict_key: CreatedKey) -> None:
    big = {"instances": [[1.0, 2.0, 3.0, 4.0]] * 400}  # > 4096 bytes
    response = client.post(PREDICT, json=big, headers=bearer(predict_key))
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


def test_413_for_a_chunked_body_over_the_limit(client: TestClient, predict_key: CreatedKey) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(400):
            yield b"[1.0, 2.0, 3.0, 4.0],"
        yield b"[1.0, 2.0, 3.0, 4.0]]}"

    headers = {**bearer(predict_key), "Content-Type": "application/json"}
    response = client.post(PREDICT, content=chunks(), headers=headers)
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


def test_create_app_refuses_tampered_weights(registry: Registry, published: VersionRecord) -> None:
    tamper(published.artifact.model_dir / WEIGHTS_NAME)
    with pytest.raises(SignatureError) as caught:
        create_app(registry, ServingSettings())
    assert WEIGHTS_NAME in str(caught.value) and "demo:1" in str(caught.value)


def test_internal_errors_are_sanitized(client: TestClient, predict_key: CreatedKey, app: object) -> None:
    state = app.state.fedguard  # type: ignore[attr-defined]

    def explode(_batch: object) -> list[str]:
        raise RuntimeError("secret detail /etc/shadow")

    object.__setattr__(state.models["demo"], "logits", explode)
    with TestClient(app, raise_server_exceptions=False) as quiet:  # type: ignore[arg-type]
        response = quiet.post(PREDICT, json=GOOD, headers=bearer(predict_key))
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal" and "shadow" not in response.text


def test_keys_created_after_start_work(client: TestClient, registry: Registry) -> None:
    late = create_key(registry, "predict")
    assert client.post(PREDICT, json=GOOD, headers=bearer(late)).status_code == 200
