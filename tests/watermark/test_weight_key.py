"""Weight-key scheme (Uchida et al. 2017): embed → verifies from the weights alone; unmarked models do not."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from fedguard.verify import verify_version
from lifecycle.architecture import ModelSpec, build_model
from lifecycle.errors import ConfigurationError, WatermarkError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from tests.conftest import make_publication
from tests.watermark.conftest import SPEC, Data, accuracy, train_model
from watermark import EmbedReport, WatermarkSecret, commitment, create_scheme, load_secret, save_secret, secret_path
from watermark.schemes.weight_key import WeightKeyScheme


@pytest.fixture(scope="module")
def scheme() -> WeightKeyScheme:
    created = create_scheme("weight-key")
    assert isinstance(created, WeightKeyScheme)
    return created


@pytest.fixture(scope="module")
def key(scheme: WeightKeyScheme, aggregate: nn.Sequential) -> WatermarkSecret:
    return scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def marked(scheme: WeightKeyScheme, aggregate: nn.Sequential, key: WatermarkSecret) -> EmbedReport:
    return scheme.embed(aggregate, key, generator=torch.Generator().manual_seed(5))


def test_secret_projects_the_largest_weight(key: WatermarkSecret) -> None:
    assert key.params["layers"] == ["1.weight"]  # Linear(30, 32): 960 numbers, more than Linear(32, 2)
    assert key.inputs.shape == (128, 960) and key.labels.shape == (128,)
    assert key.labels.bincount().tolist() == [64, 64]


def test_embedded_model_verifies_with_no_bit_error(scheme: WeightKeyScheme, marked: EmbedReport,
                                                   key: WatermarkSecret) -> None:
    result = scheme.verify(marked.model, key)
    assert result.verified and result.correct == result.n == 128 and result.trigger_accuracy == 1.0
    assert result.p_value < 1e-30 and marked.trigger_accuracy == 1.0
    assert 0 < marked.steps <= scheme.max_steps


def test_verification_needs_the_weights_only(scheme: WeightKeyScheme, marked: EmbedReport,
                                             key: WatermarkSecret) -> None:
    """A module of the same shape holding only the weights (no data, no forward pass) verifies."""
    bare = copy.deepcopy(marked.model)

    def refuse(*_: object) -> torch.Tensor:
        raise AssertionError("verification ran the model")

    bare.forward = refuse
    assert scheme.verify(bare, key).verified


def test_embedding_costs_at_most_a_point(data: Data, aggregate: nn.Sequential, marked: EmbedReport) -> None:
    before = accuracy(aggregate, data.x_test, data.y_test)
    after = accuracy(marked.model, data.x_test, data.y_test)
    assert before - after <= 0.01 + 1e-9
    assert all(torch.equal(a, b) for a, b in zip(aggregate.state_dict().values(),
                                                  train_model(data, seed=0).state_dict().values(), strict=True))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_independent_models_do_not_verify(scheme: WeightKeyScheme, data: Data, key: WatermarkSecret,
                                          seed: int) -> None:
    independent = train_model(data, seed=seed)
    result = scheme.measure(independent, key)
    assert not result.verified and result.p_value > 1e-4
    with pytest.raises(WatermarkError, match="not detected"):
        scheme.verify(independent, key)


def test_aggregate_and_other_key_do_not_verify(scheme: WeightKeyScheme, aggregate: nn.Sequential,
                                               marked: EmbedReport) -> None:
    assert not scheme.measure(aggregate, scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(99)
                                                         )).verified
    other = scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(100))
    assert not scheme.measure(marked.model, other).verified


def test_secret_round_trips_through_its_file(tmp_path: Path, scheme: WeightKeyScheme, marked: EmbedReport,
                                             key: WatermarkSecret) -> None:
    path = tmp_path / "key.safetensors"
    digest = save_secret(key, path)
    assert digest == commitment(key)
    assert scheme.verify(marked.model, load_secret(path, expected=digest)).verified


def test_works_for_a_module_without_standardize() -> None:
    """Any nn.Module with a conv or linear weight: a conv net embeds in its filters' mean (Uchida Sec. 3.1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.LazyLinear(10))
    net(torch.zeros(1, 1, 8, 8))
    scheme = create_scheme("weight-key", bits=64, layers=("2.weight",))
    secret = scheme.generate(net, ModelSpec(in_features=64, num_classes=10), generator=torch.Generator().manual_seed(1))
    assert secret.inputs.shape == (64, 8 * 3 * 3)  # mean over the 16 output channels
    report = scheme.embed(net, secret, generator=torch.Generator().manual_seed(1))
    assert scheme.verify(report.model, secret).correct >= 60  # 64 bits in 72 numbers: nearly all
    assert not scheme.measure(net, secret).verified


def test_refuses_unknown_layers_other_architectures_and_bad_parameters(aggregate: nn.Sequential,
                                                                       key: WatermarkSecret) -> None:
    with pytest.raises(ConfigurationError, match="not weights"):
        create_scheme("weight-key", layers=("9.weight",)).generate(aggregate, SPEC,
                                                                     generator=torch.Generator().manual_seed(0))
    wider = build_model(ModelSpec(in_features=30, num_classes=2, hidden=(16,)))
    with pytest.raises(ConfigurationError, match="another architecture"):
        create_scheme("weight-key").measure(wider, key)
    with pytest.raises(ConfigurationError, match="bits"):
        create_scheme("weight-key", bits=8)
    with pytest.raises(ConfigurationError, match="cannot be used"):
        create_scheme("trigger-set").measure(aggregate, key)


def test_models_verify_checks_a_published_weight_key_watermark(registry: Registry) -> None:
    """The published artifact, rebuilt from its signed weights, verifies through ``fedguard models verify``."""
    publication = make_publication(features=16)  # hidden 8: a 16×8 first layer, 128 numbers
    scheme = create_scheme("weight-key", bits=32)
    secret = scheme.generate(publication.model, publication.spec, generator=torch.Generator().manual_seed(3))
    report = scheme.embed(publication.model, secret, generator=torch.Generator().manual_seed(3))
    digest = save_secret(secret, secret_path(registry.home.keys, commitment(secret)))
    mark = {"scheme": scheme.name, "commitment": digest, **scheme.measure(report.model, secret).to_dict()}
    record = publish_model(registry, dataclasses.replace(publication, model=report.model, watermark=mark))
    result = verify_version(registry, record.ref)
    assert result["watermark"]["scheme"] == "weight-key" and result["watermark"]["verified"] is True
