"""Scheme registry and the value types of the interface."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError, WatermarkError
from watermark import (
    EmbedReport,
    Verification,
    WatermarkScheme,
    WatermarkSecret,
    available_schemes,
    create_scheme,
    register_scheme,
)
from watermark import registry as registry_module
from watermark.schemes.trigger_set import TriggerSetScheme


class _Dummy(WatermarkScheme):
    def generate(self, model: nn.Module, spec: ModelSpec, *, generator: torch.Generator) -> WatermarkSecret:
        raise NotImplementedError

    def embed(self, model: nn.Module, secret: WatermarkSecret, *, generator: torch.Generator) -> EmbedReport:
        raise NotImplementedError

    def measure(self, model: nn.Module, secret: WatermarkSecret) -> Verification:
        return Verification(self.name, 1.0, 10, 10, 1e-3, 1e-6)


def test_trigger_set_is_available() -> None:
    assert "trigger-set" in available_schemes()
    scheme = create_scheme("trigger-set", size=128)
    assert isinstance(scheme, TriggerSetScheme) and scheme.size == 128 and scheme.name == "trigger-set"


def test_unknown_scheme_lists_available() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown watermark scheme 'nope'.*trigger-set"):
        create_scheme("nope")


def test_unknown_parameter_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="trigger-set"):
        create_scheme("trigger-set", colour="blue")


def test_register_custom_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_SCHEMES", dict(registry_module._SCHEMES))
    register_scheme("dummy")(_Dummy)
    assert "dummy" in available_schemes()
    assert isinstance(create_scheme("dummy"), _Dummy)
    with pytest.raises(ConfigurationError, match="already registered"):
        register_scheme("trigger-set")(_Dummy)


def test_verify_raises_when_p_value_too_high(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_SCHEMES", dict(registry_module._SCHEMES))
    register_scheme("dummy")(_Dummy)
    scheme = create_scheme("dummy")
    secret = WatermarkSecret("dummy", torch.zeros(10, 3), torch.zeros(10), {"num_classes": 2})
    assert not scheme.measure(nn.Identity(), secret).verified
    with pytest.raises(WatermarkError, match=r"p-value 0\.001 is not below 1e-06"):
        scheme.verify(nn.Identity(), secret)


def test_verification_flag_is_derived() -> None:
    assert Verification("s", 1.0, 64, 64, 1e-20, 1e-6).verified
    assert not Verification("s", 0.5, 32, 64, 0.5, 1e-6).verified
    with pytest.raises(TypeError):
        Verification("s", 1.0, 64, 64, 0.5, 1e-6, True)  # type: ignore[call-arg]
    assert Verification("s", 1.0, 64, 64, 1e-20, 1e-6).to_dict()["verified"] is True


def test_secret_is_frozen_and_validated() -> None:
    secret = WatermarkSecret("s", torch.zeros(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1]), {"a": 1})
    assert secret.inputs.dtype == torch.float32 and secret.size == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        secret.scheme = "t"  # type: ignore[misc]
    with pytest.raises(TypeError):
        secret.params["a"] = 2  # type: ignore[index]
    with pytest.raises(ConfigurationError):
        WatermarkSecret("s", torch.zeros(4, 3), torch.zeros(5), {})
    with pytest.raises(ConfigurationError):
        WatermarkSecret("s", torch.zeros(4, 3), torch.zeros(4), {"bad": object()})
