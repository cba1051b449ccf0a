"""The numpy plan of the served MLP computes what the PyTorch module computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lifecycle.architecture import DataSchema, ModelSpec, build_model, set_standardization
from serving.inference import MAX_ROWS, MLPPlan, softmax64
from serving.models import ServedModel


def _model(hidden: tuple[int, ...], features: int = 7, classes: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build_model(ModelSpec(in_features=features, num_classes=classes, hidden=hidden))
    set_standardization(model, torch.randn(features), torch.rand(features) + 0.5)
    return model


@pytest.mark.parametrize("hidden", [(), (32,), (16, 8)])
def test_the_plan_matches_the_module(hidden: tuple[int, ...]) -> None:
    model = _model(hidden)
    plan = MLPPlan.of(model)
    assert plan is not None and len(plan.layers) == len(hidden) + 1
    batch = torch.randn(200, 7) * 3
    with torch.no_grad():
        expected = model(batch)
    got = plan.logits(batch.numpy())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(softmax64(got), torch.softmax(expected.double(), dim=1).numpy(), atol=1e-6)


def test_served_model_answers_the_same_with_and_without_the_plan() -> None:
    model = _model((32,), features=4, classes=2)
    schema = DataSchema(features=("a", "b", "c", "d"), labels=("no", "yes"))
    served = ServedModel("m", 1, "d", model, schema)
    assert served.plan is not None
    batch = torch.randn(MAX_ROWS, 4)
    fast = served.probabilities(batch)
    with torch.no_grad():
        reference = torch.softmax(model(batch).double(), dim=1)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=0)
    assert served.predict(batch) == [schema.labels[c] for c in reference.argmax(dim=1).tolist()]
    big = torch.randn(MAX_ROWS + 1, 4)  # past the plan's bound: PyTorch
    with torch.no_grad():
        torch.testing.assert_close(served.probabilities(big), torch.softmax(model(big).double(), dim=1))


@pytest.mark.parametrize(
    "module",
    [
        nn.Linear(4, 2),
        nn.Sequential(nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)),
    ],
)
def test_any_other_module_gets_no_plan(module: nn.Module) -> None:
    assert MLPPlan.of(module) is None
