"""Serving settings: environment prefix, validation translated to ConfigurationError, loopback test."""

from __future__ import annotations

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.settings import is_loopback
from serving.settings import ServingSettings, build_settings, get_serving_settings


def test_defaults_bind_loopback() -> None:
    settings = ServingSettings()
    assert (settings.host, settings.port, settings.max_instances) == ("127.0.0.1", 8000, 1024)
    assert not settings.tls


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_MAX_INSTANCES", "16")
    monkeypatch.setenv("FEDGUARD_SERVE_HOST", "0.0.0.0")
    settings = get_serving_settings()
    assert (settings.max_instances, settings.host) == (16, "0.0.0.0")


def test_overrides_win_and_none_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_PORT", "9000")
    assert build_settings(port=None).port == 9000
    assert build_settings(port=0).port == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 70000}, "port"),
        ({"max_instances": 0}, "max_instances"),
        ({"ssl_keyfile": "key.pem"}, "ssl_keyfile needs ssl_certfile"),
    ],
)
def test_invalid_values_are_configuration_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        build_settings(**overrides)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     (" 127.0.0.1 ", True), ("LocalHost", True), ("[localhost]", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
