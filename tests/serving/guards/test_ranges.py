"""Configured per-feature ranges (FEDGUARD_SERVE_FEATURE_RANGES) and type enforcement on predict."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey
from serving.settings import ServingSettings, build_settings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
RANGES = {"demo": {"f0": (0.0, 50.0), "f3": (None, 10.0)}}


@pytest.fixture
def ranged(registry: Registry, published: VersionRecord) -> Iterator[TestClient]:
    settings = ServingSettings(max_instances=8, quota_burst=100, feature_ranges=RANGES)
    with TestClient(create_app(registry, settings)) as client:
        yield client


def _predict(client: TestClient, key: CreatedKey, instances: list[list[float]]) -> tuple[int, str]:
    response = client.post(PREDICT, json={"instances": instances}, headers=bearer(key))
    body = response.json()
    return response.status_code, body["error"]["message"] if "error" in body else ""


def test_values_inside_the_ranges_and_bounds_themselves_pass(ranged: TestClient, predict_key: CreatedKey) -> None:
    status, _ = _predict(ranged, predict_key, [[0.0, -1e6, 1e6, 10.0], [50.0, 0.0, 0.0, -1e30]])
    assert status == 200


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([[1.0, 2.0, 3.0, 4.0], [50.5, 0.0, 0.0, 0.0]],
         "instance 1 value 0 (feature 'f0') is outside its configured range [0, 50]; send values inside it"),
        ([[-0.001, 0.0, 0.0, 0.0]],
         "instance 0 value 0 (feature 'f0') is outside its configured range [0, 50]; send values inside it"),
        ([[1.0, 0.0, 0.0, 10.5]],
         "instance 0 value 3 (feature 'f3') is outside its configured range [-inf, 10]; send values inside it"),
    ],
    ids=["above-max", "below-min", "open-min"],
)
def test_a_value_outside_its_range_is_refused_naming_instance_feature_and_range(
    ranged: TestClient, predict_key: CreatedKey, instances: list[list[float]], message: str
) -> None:
    assert _predict(ranged, predict_key, instances) == (422, message)


def test_refused_ranges_use_no_quota(registry: Registry, published: VersionRecord, predict_key: CreatedKey) -> None:
    settings = ServingSettings(quota_burst=1, quota_rate=0.001, feature_ranges=RANGES)
    with TestClient(create_app(registry, settings, clock=lambda: 1_000.0)) as client:
        assert _predict(client, predict_key, [[99.0, 0.0, 0.0, 0.0]])[0] == 422
        assert _predict(client, predict_key, [[1.0, 0.0, 0.0, 0.0]])[0] == 200
        assert _predict(client, predict_key, [[1.0, 0.0, 0.0, 0.0]])[0] == 429


def test_ranges_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_FEATURE_RANGES", '{"demo": {"f0": [0, 50], "f3": [null, 10]}}')
    assert build_settings().feature_ranges == {"demo": {"f0": (0.0, 50.0), "f3": (None, 10.0)}}


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ('{"demo": {"f0": [5, 1]}}', "min 5 above max 1"),
        ('{"demo": {"f0": [0]}}', "feature_ranges"),
        ('{"demo": {"f0": [0, "Infinity"]}}', "feature_ranges"),
        ('{"demo": {"f0": [0, "ten"]}}', "feature_ranges"),
    ],
    ids=["inverted", "one-bound", "infinite", "not-a-number"],
)
def test_invalid_range_settings_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, value: str, hint: str
) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_FEATURE_RANGES", value)
    with pytest.raises(ConfigurationError, match=hint):
        build_settings()


@pytest.mark.parametrize(
    ("ranges", "hint"),
    [
        ({"demo": {"radius": (0.0, 1.0)}}, "feature 'radius', which model 'demo' does not have"),
        ({"other": {"f0": (0.0, 1.0)}}, "model 'other', which is not served"),
    ],
    ids=["unknown-feature", "unknown-model"],
)
def test_ranges_naming_what_is_not_served_stop_the_server(
    registry: Registry, published: VersionRecord, ranges: dict[str, dict[str, tuple[float, float]]], hint: str
) -> None:
    with pytest.raises(ConfigurationError, match=hint):
        create_app(registry, ServingSettings(feature_ranges=ranges))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1.0, 2.0, [3.0], 4.0]]}, "instance 0 value 2 (feature 'f2') is not a number"),
        ({"instances": [[[1.0, 2.0, 3.0, 4.0]]]}, "instance 0 value 0 (feature 'f0') is not a number"),
        ({"instances": [[1.0, 2.0, 3.0, {"v": 4.0}]]}, "instance 0 value 3 (feature 'f3') is not a number"),
        ({"instances": [[1.0, 2.0, 3.0, False]]}, "instance 0 value 3 (feature 'f3') is not a number"),
        ({"instances": [["1", 2.0, 3.0, 4.0]]}, "instance 0 value 0 (feature 'f0') is not a number"),
        ({"instances": [[1.0, 2.0, 3.0, 4.0, "x"]]}, "instance 0 value 4 is not a number"),
        ({"instances": {"0": [1.0, 2.0, 3.0, 4.0]}}, "'instances' must be a list of lists of numbers"),
    ],
    ids=["nested-value", "nested-instance", "object-value", "bool", "numeric-string", "past-the-schema",
         "object-instances"],
)
def test_wrong_types_are_refused_naming_the_field(
    client: TestClient, predict_key: CreatedKey, body: object, message: str
) -> None:
    response = client.post(PREDICT, json=body, headers=bearer(predict_key))
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(message)


def test_integers_are_numbers(client: TestClient, predict_key: CreatedKey) -> None:
    response = client.post(PREDICT, json={"instances": [[1, 2, 3, 4]]}, headers=bearer(predict_key))
    assert response.status_code == 200
