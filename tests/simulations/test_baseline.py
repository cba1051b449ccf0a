"""The central baseline is a fair one: as good as scikit-learn's own logistic regression on the same split."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from federation.defaults import local_epochs_for
from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from simulations.baseline import central_accuracy
from simulations.datasets import available_datasets, load_dataset
from simulations.federation import SimulationConfig


@pytest.mark.parametrize("name", available_datasets())
def test_every_bundled_datasets_baseline_matches_sklearn_logistic_regression(name: str) -> None:
    """``digits`` has pixels that are constant on the held-out set: a 1e-8 scale made its baseline chance (0.100)."""
    cfg = SimulationConfig(dataset=name)
    data = load_dataset(name)
    train_x, test_x, train_y, test_y = train_test_split(  # the split prepare_data makes
        data.features, data.labels, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=data.labels
    )
    ours = central_accuracy(
        ModelSpec(data.features.shape[1], len(data.label_names), (32,)), train_x, train_y, test_x, test_y,
        epochs=cfg.rounds * local_epochs_for(cfg.local_epochs, 0.0), batch_size=cfg.batch_size, lr=cfg.lr,
        seed=cfg.seed,
    )
    sklearn = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train_x, train_y)
    reference = float(sklearn.score(test_x, test_y))
    assert abs(ours - reference) <= 0.05, (name, ours, reference)


def test_a_constant_reference_feature_is_centred_not_blown_up() -> None:
    model = build_model(ModelSpec(in_features=3, num_classes=2))
    reference = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 3.0], [0.0, 5.0 + 1e-7, 5.0]])
    set_standardization(model, reference.mean(0), reference.std(0))
    scale = model[0].scale
    assert scale[0].item() == 1.0 and scale[1].item() == 1.0  # no 1e-8: a site's 16 would become 1.6e9
    assert scale[2].item() == pytest.approx(2.0)
    assert model[0](torch.tensor([[16.0, 6.0, 3.0]])).tolist() == [[16.0, 1.0, 0.0]]


def test_an_indicator_is_scaled_by_its_range_not_by_its_rarity() -> None:
    """One 1 in 360 rows has a std of 0.053: dividing by it turned a site's 16 into 300."""
    reference = torch.zeros(360, 3)
    reference[0, 0] = 1.0            # a rare indicator
    reference[:, 1] = 7.0            # constant
    reference[:, 2] = torch.arange(360) % 3  # three values: a real spread
    mean, scale = reference_standardization(reference)
    assert scale[0].item() == 1.0 and scale[1].item() == 1.0
    assert scale[2].item() == pytest.approx(reference[:, 2].std().item())
    assert mean.tolist() == pytest.approx([1 / 360, 7.0, 1.0])
