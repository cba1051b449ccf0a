"""How well an attack worked, measured on the coordinator's held-out test set with the final model.

* main-task accuracy: the outcome's ``accuracy`` (every run has it);
* backdoor: the **attack success rate**, the share of triggered test inputs
  whose true label is not the target that the model classifies as the target
  (Bagdasaryan et al. 2020, "backdoor accuracy");
* label flipping: the **flipped-class error**, the error rate on test records
  of the classes the attack relabelled, and the **flip rate**, the share of
  them classified as the attacker's label (Tolmie et al. 2020).

Other attacks have no target: their effect is the main-task accuracy alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from simulations.attacks.backdoor import Backdoor
from simulations.attacks.base import Attack
from simulations.attacks.label_flipping import LabelFlipping


def predict(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """The model's class for each row."""
    model.eval()
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(np.asarray(features, dtype=np.float32))).argmax(1).numpy())


def _standardization(model: nn.Module, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's input ``Standardize`` buffers (identity when it has none)."""
    first = next(iter(model.children()), None)
    mean, scale = getattr(first, "mean", None), getattr(first, "scale", None)
    if isinstance(mean, torch.Tensor) and isinstance(scale, torch.Tensor):
        return np.asarray(mean.detach().numpy()), np.asarray(scale.detach().numpy())
    return np.zeros(features, dtype=np.float32), np.ones(features, dtype=np.float32)


def backdoor_success_rate(attack: Backdoor, model: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of triggered test inputs with true label ≠ target that the model calls the target."""
    keep = labels != attack.target
    if not keep.any():
        return float("nan")
    mean, scale = _standardization(model, features.shape[1])
    triggered = attack.trigger.stamp(features[keep], mean, scale)
    return float(np.mean(predict(model, triggered) == attack.target))


def label_flip_rates(attack: LabelFlipping, model: nn.Module, features: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> dict[str, float]:
    """Error rate, and rate of the attacker's label, on test records of the relabelled classes."""
    mapping = attack.mapping(num_classes)
    flipped = mapping[labels] != labels
    if not flipped.any():
        return {"flipped_class_error": float("nan"), "flip_rate": float("nan")}
    predicted = predict(model, features[flipped])
    return {"flipped_class_error": float(np.mean(predicted != labels[flipped])),
            "flip_rate": float(np.mean(predicted == mapping[labels[flipped]]))}


def attack_metrics(attack: Attack, model: nn.Module, features: np.ndarray, labels: np.ndarray,
                   num_classes: int) -> dict[str, float]:
    """The attack's own success measures (empty for untargeted attacks); see the module docstring."""
    if isinstance(attack, Backdoor):
        return {"attack_success_rate": backdoor_success_rate(attack, model, features, labels)}
    if isinstance(attack, LabelFlipping):
        return label_flip_rates(attack, model, features, labels, num_classes)
    return {}
