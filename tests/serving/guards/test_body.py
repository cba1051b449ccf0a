"""The JSON body guard: nesting depth bounded without recursion, the key checked before the body is parsed.

A body nested 100 000 levels deep used to reach :func:`json.loads` before
the key was looked at: an unauthenticated 500 (``RecursionError``) and a
traceback of ~50 lines in the operator's log per request. Now the caller gets
401 without a key and 422 ``invalid_input`` with one, and the log one line.
"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.guards.body import MAX_JSON_DEPTH, json_depth_exceeds
from serving.guards.keys import CreatedKey
from serving.settings import ServingSettings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
CANARY = "/v1/admin/models/demo/canary"
JSON_TYPE = {"Content-Type": "application/json"}
DEEP = 100_000


def nested(levels: int, inner: bytes = b"") -> bytes:
    return b"[" * levels + inner + b"]" * levels


def error_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The serving log's records for the request, without the access log's line."""
    return [r for r in caplog.records if r.name.startswith("fedguard.serving") and r.name != "fedguard.serving.access"]


@pytest.fixture
def serving_settings() -> ServingSettings:
    """Room for the 200 kB deep body: the depth guard, not the size limit, must refuse it."""
    return ServingSettings(max_instances=8, max_body_bytes=1024 * 1024)


def test_a_deep_body_without_a_key_is_401_and_one_log_line(client: TestClient,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedguard")
    response = client.post(PREDICT, content=b'{"instances": ' + nested(DEEP) + b"}", headers=JSON_TYPE)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    lines = error_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None


@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.fedguard+json"])
def test_a_deep_body_with_a_key_is_422_naming_the_limit(client: TestClient, predict_key: CreatedKey,
                                                        caplog: pytest.LogCaptureFixture, content_type: str) -> None:
    caplog.set_level(logging.INFO, logger="fedguard")
    response = client.post(PREDICT, content=b'{"instances": ' + nested(DEEP) + b"}",
                           headers={**bearer(predict_key), "Content-Type": content_type})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert f"more than {MAX_JSON_DEPTH} levels" in error["message"]
    lines = error_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None


def test_admin_routes_check_the_key_before_the_body(client: TestClient, admin_key: CreatedKey,
                                                    predict_key: CreatedKey) -> None:
    deep = b'{"version": ' + nested(DEEP, b"2") + b', "weight": 10}'
    assert client.post(CANARY, content=deep, headers=JSON_TYPE).status_code == 401
    assert client.post(CANARY, content=deep, headers={**JSON_TYPE, **bearer(predict_key)}).status_code == 403
    response = client.post(CANARY, content=deep, headers={**JSON_TYPE, **bearer(admin_key)})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("path", [PREDICT, CANARY])
def test_a_body_that_is_not_text_is_422_invalid_input(client: TestClient, admin_key: CreatedKey, path: str) -> None:
    response = client.post(path, content=b'{"version": "\xff"}', headers={**JSON_TYPE, **bearer(admin_key)})
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "invalid_input", "message": "the body is not valid JSON"}


def test_admin_messages_name_the_admin_body_not_instances(client: TestClient, admin_key: CreatedKey) -> None:
    response = client.post(CANARY, content=b"version 2", headers={"Content-Type": "text/plain", **bearer(admin_key)})
    assert response.status_code == 422
    assert "instances" not in response.json()["error"]["message"]
    response = client.post(CANARY, json={"version": 0, "weight": 10}, headers=bearer(admin_key))
    assert response.status_code == 422 and "'version'" in response.json()["error"]["message"]


def test_a_body_at_the_limit_is_parsed(client: TestClient, predict_key: CreatedKey) -> None:
    """Depth MAX_JSON_DEPTH passes the guard (and then fails the schema, as any wrong shape does)."""
    body = b'{"instances": ' + nested(MAX_JSON_DEPTH - 1, b"1") + b"}"
    response = client.post(PREDICT, content=body, headers={**JSON_TYPE, **bearer(predict_key)})
    assert response.status_code == 422 and "levels" not in response.json()["error"]["message"]


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ax,:'), max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=40,
)


@given(value=JSON_VALUES, limit=st.integers(min_value=0, max_value=8))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_depth_check_agrees_with_the_parsed_value(value: object, limit: int) -> None:
    """Brackets inside strings (escaped quotes too) do not count; containers do."""
    body = json.dumps({"v": value}).encode()
    assert json_depth_exceeds(body, limit) is (depth({"v": value}) > limit)


def test_depth_check_on_edge_cases() -> None:
    assert not json_depth_exceeds(b"", 0)
    assert json_depth_exceeds(nested(DEEP), MAX_JSON_DEPTH)
    assert not json_depth_exceeds(b"[]" * 500_000, 1)  # many brackets, shallow
    assert json_depth_exceeds(b"[" * 40, MAX_JSON_DEPTH)  # unclosed: as deep as it opens
    assert not json_depth_exceeds(b'"' + b"[" * 40, MAX_JSON_DEPTH)  # all inside an unterminated string
    assert not json_depth_exceeds(b'["\\"' + b"[" * 40 + b'"]', MAX_JSON_DEPTH)
