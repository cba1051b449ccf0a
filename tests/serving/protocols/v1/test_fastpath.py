"""The predict fast path: same answers as the FastAPI route behind it, which gets everything unusual."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from serving.guards.keys import CreatedKey
from serving.protocols.v1.fastpath import PredictFastPath
from serving.protocols.v1.routes import encode_answer
from serving.protocols.v1.schemas import PredictResponse
from serving.settings import ServingSettings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
GOOD = {"instances": [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]}


@pytest.fixture
def serving_settings() -> ServingSettings:
    """As the shared fixture, with a key cache that outlives a slow first request on loaded cores."""
    return ServingSettings(max_instances=8, max_body_bytes=4096, auth_cache_seconds=60)


@pytest.fixture
def fallbacks(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the requests the fast path handed to the FastAPI route, in order."""
    fast = [r for r in app.router.routes if isinstance(getattr(r, "endpoint", None), PredictFastPath)]
    assert len(fast) == 1 and app.router.routes[0] is fast[0]  # matched before the FastAPI route
    route = fast[0].endpoint.route  # type: ignore[attr-defined]
    handle = route.handle
    seen: list[str] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await handle(scope, receive, send)

    monkeypatch.setattr(route, "handle", counting)
    return seen


def test_a_bearer_key_is_answered_by_the_fast_path_with_the_same_bytes(
    client: TestClient, app: FastAPI, predict_key: CreatedKey, fallbacks: list[str]
) -> None:
    first = client.post(PREDICT, json=GOOD, headers=bearer(predict_key))  # key not cached yet: registry query
    assert app.state.fedguard.key_cache.lookup(predict_key.key, app.state.fedguard.clock()) is not None
    second = client.post(PREDICT, json=GOOD, headers=bearer(predict_key))  # cached
    assert fallbacks == []  # both answered by the fast path
    fallbacks_first = client.post(PREDICT, json=GOOD, headers={**bearer(predict_key), "Content-Type": "text/json"})
    assert fallbacks == [PREDICT] and fallbacks_first.status_code == 422  # the FastAPI route behind it
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.headers["content-type"] == second.headers["content-type"] == "application/json"
    assert second.json()["model"] == "demo" and len(second.json()["predictions"]) == 2


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"instances": [[0.5, -1.0,', {"Content-Type": "application/json"}, 422),  # broken JSON
        (b'{"instances": [[0.5, -1.0, 2.0, 0.0]]}', {"Content-Type": "text/plain"}, 422),
        (b'{"instances": [[0.5, "x", 2.0, 0.0]]}', {"Content-Type": "application/json"}, 422),  # strict
        (b'{"instances": [[0.5, -1.0, 2.0, 0.0]], "extra": 1}', {"Content-Type": "application/json"}, 422),
        (b"", {"Content-Type": "application/json"}, 422),
    ],
)
def test_what_the_fast_path_does_not_take_gets_the_fastapi_answer(
    client: TestClient, predict_key: CreatedKey, fallbacks: list[str], content: bytes, headers: dict[str, str],
    status: int,
) -> None:
    assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200  # now cached
    fallbacks.clear()
    response = client.post(PREDICT, content=content, headers={**headers, **bearer(predict_key)})
    assert fallbacks == [PREDICT]
    assert response.status_code == status
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer"])
def test_a_request_without_a_bearer_key_goes_to_the_dependency(
    client: TestClient, predict_key: CreatedKey, fallbacks: list[str], authorization: str | None
) -> None:
    assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
    fallbacks.clear()
    headers: dict[str, Any] = {} if authorization is None else {"Authorization": authorization}
    response = client.post(PREDICT, json=GOOD, headers=headers)
    assert fallbacks == [PREDICT]
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("presented", ["fgk_0123456789abcdef_wrong", "not-a-key"])
def test_a_bad_bearer_key_gets_the_same_401_from_the_fast_path(
    client: TestClient, fallbacks: list[str], presented: str
) -> None:
    fast = client.post(PREDICT, json=GOOD, headers={"Authorization": f"Bearer {presented}"})
    assert fallbacks == []
    route = client.post(PREDICT, content=b"{}", headers={"Authorization": f"Bearer {presented}",
                                                          "Content-Type": "text/plain"})
    assert fallbacks == [PREDICT]  # the FastAPI route authenticates before it validates the body
    assert fast.status_code == route.status_code == 401
    assert fast.json() == route.json() and fast.json()["error"]["code"] == "unauthorized"


def test_the_fast_path_keeps_the_guards_after_authentication(
    client: TestClient, app: FastAPI, predict_key: CreatedKey, fallbacks: list[str]
) -> None:
    assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
    fallbacks.clear()
    too_many = {"instances": [[0.0, 0.0, 0.0, 0.0]] * 9}  # max_instances is 8 in these tests
    wrong_width = {"instances": [[0.0, 0.0, 0.0]]}
    assert client.post(PREDICT, json=too_many, headers=bearer(predict_key)).status_code == 422
    assert client.post(PREDICT, json=wrong_width, headers=bearer(predict_key)).status_code == 422
    assert client.post("/v1/models/nope/predict", json=GOOD, headers=bearer(predict_key)).status_code == 404
    assert fallbacks == []  # all three refused by the shared guards, on the fast path
    served = app.state.fedguard.metrics.exposition().decode()  # type: ignore[attr-defined]
    assert 'fedguard_requests_total{model="demo",route="/v1/models/{name}/predict",status="422"} 2.0' in served


@pytest.mark.parametrize(
    "fields",
    [
        {"predictions": ["benign", "malignant"]},
        {"predictions": [0, 1, 1]},
        {"predictions": ["ja \"wohl\"", "größer\n", "\u2603", "a\\b"]},
        {"predictions": ["yes"], "top_k": [[{"label": "yes", "score": 0.82}]]},
        {"predictions": ["yes"], "classes": ["no", "yes"], "probabilities": [[0.18, 0.82]]},
    ],
)
def test_the_encoded_answer_is_what_the_response_model_dumps(app: FastAPI, fields: dict[str, Any]) -> None:
    model = app.state.fedguard.models["demo"]  # type: ignore[attr-defined]
    expected = PredictResponse(model=model.name, version=model.version, **fields).model_dump_json(exclude_none=True)
    assert json.loads(encode_answer(model, fields)) == json.loads(expected)
    assert encode_answer(model, fields) == expected.encode()
