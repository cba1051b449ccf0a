"""Attack success measured on a held-out set: backdoor success rate, flipped-class error and flip rate."""

from __future__ import annotations

import math

import numpy as np
import torch

from lifecycle.architecture import ModelSpec, build_model, set_standardization
from simulations.attacks import create_attack
from simulations.attacks.backdoor import Backdoor
from simulations.attacks.label_flipping import LabelFlipping
from simulations.attacks.metrics import attack_metrics

RNG = np.random.default_rng(5)
FEATURES = RNG.normal(loc=3.0, scale=2.0, size=(200, 4)).astype(np.float32)


def _model(classes: int, weights: list[list[float]], bias: list[float]) -> torch.nn.Sequential:
    """Standardize (on FEATURES) then one linear layer with the given weights."""
    model = build_model(ModelSpec(4, classes, ()))
    set_standardization(model, torch.from_numpy(FEATURES.mean(0)), torch.from_numpy(FEATURES.std(0)))
    linear = model[1]
    assert isinstance(linear, torch.nn.Linear)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weights))
        linear.bias.copy_(torch.tensor(bias))
    return model


def test_the_backdoor_success_rate_counts_triggered_non_target_inputs_classified_as_the_target() -> None:
    labels = RNG.integers(0, 2, size=200)
    attack = create_attack("backdoor:target=1,width=1,sigmas=10")
    assert isinstance(attack, Backdoor)
    follows_x0 = _model(2, [[0, 0, 0, 0], [1, 0, 0, 0]], [0, -5])  # class 1 iff standardized x0 > 5
    assert attack_metrics(attack, follows_x0, FEATURES, labels, 2) == {"attack_success_rate": 1.0}
    ignores_x0 = _model(2, [[0, 0, 0, 0], [0, 1, 0, 0]], [0, 0])  # class 1 iff standardized x1 > 0
    standardized_x1 = (FEATURES[:, 1] - FEATURES[:, 1].mean()) / FEATURES[:, 1].std()
    expected = float(np.mean(standardized_x1[labels != 1] > 0))
    assert math.isclose(attack_metrics(attack, ignores_x0, FEATURES, labels, 2)["attack_success_rate"], expected,
                        abs_tol=1e-9)


def test_label_flipping_reports_the_error_and_flip_rate_on_the_relabelled_class_only() -> None:
    labels = RNG.integers(0, 3, size=200)
    attack = create_attack("label-flipping:source=0,target=2")
    assert isinstance(attack, LabelFlipping)
    model = _model(3, [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], [0, -100, 0])  # 2 iff x0 above its mean, else 0
    above = ((FEATURES[:, 0] - FEATURES[:, 0].mean()) / FEATURES[:, 0].std() > 0)[labels == 0]
    rates = attack_metrics(attack, model, FEATURES, labels, 3)
    assert math.isclose(rates["flipped_class_error"], float(above.mean()), abs_tol=1e-9)
    assert math.isclose(rates["flip_rate"], float(above.mean()), abs_tol=1e-9)  # every error here is the target
    assert attack_metrics(create_attack("scaling"), model, FEATURES, labels, 3) == {}
