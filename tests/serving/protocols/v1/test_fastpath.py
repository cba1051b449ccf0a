"""The predict fast path: same answers as the FastAPI route behind it, which gets everything unusual."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

import serving.protocols.v1.fastpath as fastpath
from serving.guards.keys import CreatedKey
from serving.openapi import ServingAPI
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
    served = app.state.fedguard.metrics.exposition().decode()
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
    model = app.state.fedguard.models["demo"]
    expected = PredictResponse(model=model.name, version=model.version, **fields).model_dump_json(exclude_none=True)
    assert json.loads(encode_answer(model, fields)) == json.loads(expected)
    assert encode_answer(model, fields) == expected.encode()


def front(app: FastAPI) -> PredictFastPath:
    """The predict fast path that ``app`` runs in front of its middleware."""
    assert isinstance(app, ServingAPI) and isinstance(app.fast_path, PredictFastPath)
    return app.fast_path


@pytest.fixture
def through_middleware(app: FastAPI) -> list[str]:
    """Paths of the predict requests that went through the app's middleware stack instead of PredictFastPath.serve."""
    assert isinstance(app, ServingAPI)
    inner = app.through_middleware
    seen: list[str] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await inner(scope, receive, send)

    fast = front(app)
    assert fast.recorder is not None
    fast.attach(counting, fast.recorder, fast.max_body_bytes)
    return seen


def test_the_common_request_is_answered_in_front_of_the_middleware_and_counted_once(
    client: TestClient, app: FastAPI, predict_key: CreatedKey, through_middleware: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("INFO", logger="fedguard.serving.access"):
        ok = client.post(PREDICT, json=GOOD, headers=bearer(predict_key))
        unknown = client.post("/v1/models/nope/predict", json=GOOD, headers=bearer(predict_key))
        bad_key = client.post(PREDICT, json=GOOD, headers={"Authorization": "Bearer fgk_0123456789abcdef_wrong"})
    assert through_middleware == []  # all three answered by PredictFastPath.serve
    assert ok.status_code == 200 and unknown.status_code == 404 and bad_key.status_code == 401
    assert bad_key.headers["www-authenticate"] and set(bad_key.json()) == set(unknown.json()) == {"error"}
    served = app.state.fedguard.metrics.exposition().decode()
    for model, status in (("demo", "200"), ("", "404"), ("demo", "401")):
        assert f'fedguard_requests_total{{model="{model}",route="/v1/models/{{name}}/predict",status="{status}"}} 1.0' \
            in served
    assert 'fedguard_predict_duration_seconds_count{model="demo"} 2.0' in served  # the 200 and the 401
    lines = [r.getMessage() for r in caplog.records if r.name == "fedguard.serving.access"]
    assert len(lines) == 3 and lines[0].startswith("POST /v1/models/{name}/predict 200 ")
    assert lines[0].endswith(f"key={predict_key.info.key_id}") and lines[2].endswith("key=-")


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, None),  # no Content-Length
        ({"Content-Type": "text/plain"}, b'{"instances": [[0.5, -1.0, 2.0, 0.0]]}'),
        ({"Content-Type": "application/json"}, b'{"instances": [[0.5, -1.0,'),  # read, then replayed
    ],
)
def test_what_the_front_does_not_answer_goes_through_the_middleware_once(
    client: TestClient, app: FastAPI, predict_key: CreatedKey, through_middleware: list[str],
    headers: dict[str, str], content: bytes | None, caplog: pytest.LogCaptureFixture,
) -> None:
    body = content if content is not None else iter([json.dumps(GOOD).encode()])  # an iterator is sent chunked
    with caplog.at_level("INFO", logger="fedguard.serving.access"):
        response = client.post(PREDICT, content=body, headers={**headers, **bearer(predict_key)})
    assert through_middleware == [PREDICT]
    lines = [r.getMessage() for r in caplog.records if r.name == "fedguard.serving.access"]
    assert len(lines) == 1 and lines[0].endswith(f"key={predict_key.info.key_id}")  # also when read and replayed
    assert response.status_code == (200 if content is None else 422)
    served = app.state.fedguard.metrics.exposition().decode()
    counted = [line for line in served.splitlines() if line.startswith("fedguard_requests_total{")]
    assert len(counted) == 1 and counted[0].endswith(" 1.0")  # by the middleware, not twice


def test_an_unexpected_error_in_front_of_the_middleware_is_a_500_and_reaches_the_server(
    app: FastAPI, predict_key: CreatedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(fastpath, "answer_predict", broken)
    with TestClient(app, raise_server_exceptions=False) as quiet:
        response = quiet.post(PREDICT, json=GOOD, headers=bearer(predict_key))
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal"
    assert "boom" not in response.text
    with TestClient(app) as loud, pytest.raises(RuntimeError, match="boom"):  # re-raised, for uvicorn to log
        loud.post(PREDICT, json=GOOD, headers=bearer(predict_key))
    served = app.state.fedguard.metrics.exposition().decode()
    assert 'fedguard_requests_total{model="demo",route="/v1/models/{name}/predict",status="500"} 2.0' in served


def test_a_body_longer_than_the_limit_is_refused_while_it_is_read(app: FastAPI, predict_key: CreatedKey) -> None:
    limit = front(app).max_body_bytes
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": b"[" * (limit // 2), "more_body": True},
                     {"type": "http.request", "body": b"[" * (limit // 2 + 1), "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": "POST", "path": PREDICT, "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10"),
                         (b"authorization", f"Bearer {predict_key.key}".encode())]}
    asyncio.run(app(scope, receive, send))  # a Content-Length that understates the body
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
