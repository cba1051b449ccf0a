"""Fixtures for the serving tests: an app over the published 'demo' model, and keys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey, create_key
from serving.settings import ServingSettings, get_serving_settings


@pytest.fixture(autouse=True)
def _no_serving_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the developer's FEDGUARD_SERVE_* variables out of the tests."""
    for name in list(os.environ):
        if name.startswith("FEDGUARD_SERVE_"):
            monkeypatch.delenv(name)
    get_serving_settings.cache_clear()
    yield
    get_serving_settings.cache_clear()


@pytest.fixture
def serving_settings() -> ServingSettings:
    return ServingSettings(max_instances=8, max_body_bytes=4096)


@pytest.fixture
def app(registry: Registry, published: VersionRecord, serving_settings: ServingSettings) -> FastAPI:
    return create_app(registry, serving_settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def predict_key(registry: Registry) -> CreatedKey:
    return create_key(registry, "predict", "tests", actor="test")


@pytest.fixture
def admin_key(registry: Registry) -> CreatedKey:
    return create_key(registry, "admin", "ops", actor="test")


def bearer(key: CreatedKey | str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key if isinstance(key, str) else key.key}"}
