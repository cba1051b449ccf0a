"""Trigger-set scheme on a breast-cancer model: detection, false positives, cost, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lifecycle.architecture import ModelSpec, Standardize, build_model
from lifecycle.errors import ConfigurationError, VerificationError, WatermarkError
from tests.watermark.conftest import SPEC, Data, accuracy, train_model
from watermark import EmbedReport, WatermarkSecret, commitment, create_scheme
from watermark.schemes.trigger_set import TriggerSetScheme


def test_secret_is_out_of_distribution_in_raw_space(secret: WatermarkSecret, aggregate: nn.Sequential) -> None:
    standardize = aggregate[0]
    assert isinstance(standardize, Standardize)
    standardized = (secret.inputs - standardize.mean) / standardize.scale
    assert secret.inputs.shape == (64, 30) and secret.labels.shape == (64,)
    assert torch.allclose(standardized.abs(), torch.full_like(standardized, 5.0), atol=1e-3)
    assert secret.labels.bincount().tolist() == [32, 32]
    assert secret.params["num_classes"] == 2


def test_embedded_model_verifies(scheme: TriggerSetScheme, embedded: EmbedReport, secret: WatermarkSecret) -> None:
    result = scheme.verify(embedded.model, secret)
    assert result.verified and result.p_value < scheme.threshold
    assert result.trigger_accuracy == embedded.trigger_accuracy == 1.0
    assert result.n == 64 and result.correct == 64
    assert 0 < embedded.steps <= scheme.max_steps and embedded.param_distance > 0


def test_embedding_costs_little_test_accuracy(data: Data, aggregate: nn.Sequential, embedded: EmbedReport) -> None:
    before = accuracy(aggregate, data.x_test, data.y_test)
    after = accuracy(embedded.model, data.x_test, data.y_test)
    assert before > 0.9
    assert before - after <= 0.03


def test_unwatermarked_model_does_not_verify(
    scheme: TriggerSetScheme, data: Data, secret: WatermarkSecret
) -> None:
    independent = train_model(data, seed=1)
    with pytest.raises(WatermarkError, match="not detected") as caught:
        scheme.verify(independent, secret)
    assert isinstance(caught.value, VerificationError)
    assert not scheme.measure(independent, secret).verified


def test_aggregate_itself_does_not_verify(
    scheme: TriggerSetScheme, aggregate: nn.Sequential, secret: WatermarkSecret
) -> None:
    result = scheme.measure(aggregate, secret)
    assert not result.verified and result.p_value > 1e-3
    with pytest.raises(WatermarkError):
        scheme.verify(aggregate, secret)


def test_other_secret_does_not_verify_on_watermarked_model(
    scheme: TriggerSetScheme, aggregate: nn.Sequential, embedded: EmbedReport
) -> None:
    other = scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(99))
    with pytest.raises(WatermarkError):
        scheme.verify(embedded.model, other)


def test_embed_leaves_aggregate_untouched(
    scheme: TriggerSetScheme, aggregate: nn.Sequential, secret: WatermarkSecret
) -> None:
    model = copy.deepcopy(aggregate)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = scheme.embed(model, secret, generator=torch.Generator().manual_seed(7))
    assert report.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    buffers = dict(report.model.named_buffers())
    assert torch.equal(buffers["0.mean"], before["0.mean"]) and torch.equal(buffers["0.scale"], before["0.scale"])


def test_deterministic_given_generator(
    scheme: TriggerSetScheme, aggregate: nn.Sequential, secret: WatermarkSecret, embedded: EmbedReport
) -> None:
    again = scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(1234))
    assert commitment(again) == commitment(secret)
    report = scheme.embed(aggregate, again, generator=torch.Generator().manual_seed(7))
    assert report.steps == embedded.steps
    for mine, theirs in zip(report.model.parameters(), embedded.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_multiclass_model_is_watermarked() -> None:
    spec = ModelSpec(in_features=8, num_classes=4, hidden=(16,))
    torch.manual_seed(0)
    model = build_model(spec)
    scheme = create_scheme("trigger-set", size=24)
    secret = scheme.generate(model, spec, generator=torch.Generator().manual_seed(0))
    report = scheme.embed(model, secret, generator=torch.Generator().manual_seed(0))
    assert scheme.verify(report.model, secret).p_value < 1e-6


def test_too_few_triggers_for_threshold_is_rejected(aggregate: nn.Sequential) -> None:
    with pytest.raises(ConfigurationError, match="raise size"):
        create_scheme("trigger-set", size=16).generate(aggregate, SPEC, generator=torch.Generator())


def test_model_without_standardize_is_rejected(scheme: TriggerSetScheme) -> None:
    bare = nn.Sequential(nn.Linear(30, 2))
    with pytest.raises(ConfigurationError, match="Standardize"):
        scheme.generate(bare, SPEC, generator=torch.Generator())


def test_secret_of_another_scheme_is_rejected(scheme: TriggerSetScheme, embedded: EmbedReport,
                                              secret: WatermarkSecret) -> None:
    foreign = WatermarkSecret("weight-key", secret.inputs, secret.labels, dict(secret.params))
    with pytest.raises(ConfigurationError, match="weight-key"):
        scheme.measure(embedded.model, foreign)


def test_model_with_other_input_width_is_rejected(scheme: TriggerSetScheme, secret: WatermarkSecret) -> None:
    with pytest.raises(ConfigurationError, match="30 features"):
        scheme.measure(build_model(ModelSpec(in_features=4, num_classes=2)), secret)


@pytest.mark.parametrize("bad", [{"size": 0}, {"lr": -1.0}, {"anchor_weight": -1.0},
                                 {"threshold": 0.0}, {"target_accuracy": 1.5}])
def test_invalid_parameters_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        create_scheme("trigger-set", **bad)


def test_float64_model_is_supported(scheme: TriggerSetScheme, aggregate: nn.Sequential,
                                    secret: WatermarkSecret) -> None:
    model = copy.deepcopy(aggregate).double()
    report = scheme.embed(model, secret, generator=torch.Generator().manual_seed(7))
    assert next(report.model.parameters()).dtype == torch.float64
    assert scheme.verify(report.model, secret).correct == 64
