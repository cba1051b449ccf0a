"""DP-SGD plan and accounting: ε never overshoots, and matches what Opacus really ran."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from lifecycle.architecture import ModelSpec, build_model
from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory, calibrate_noise, create_accountant
from privacy.dp_sgd import DPPlan, make_private


@settings(max_examples=15, deadline=None)
@given(
    eps=st.floats(0.5, 10.0),
    n=st.integers(20, 400),
    batch=st.integers(4, 64),
    epochs=st.integers(1, 12),
)
def test_planned_epsilon_never_overshoots(eps: float, n: int, batch: int, epochs: int) -> None:
    plan = DPPlan.for_run(target_epsilon=eps, delta=1e-5, max_grad_norm=1.0, num_examples=n,
                          batch_size=batch, epochs=epochs)
    spent = plan.history(plan.planned_steps).epsilon()
    assert spent <= eps * 1.0001
    assert spent >= eps * 0.9  # and the noise is not wastefully large


def test_epsilon_grows_with_steps() -> None:
    plan = DPPlan.for_run(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, num_examples=90,
                          batch_size=32, epochs=10)
    values = [plan.history(s).epsilon() for s in (0, 3, 6, 15, plan.planned_steps)]
    assert values[0] == 0.0
    assert values == sorted(values)


def test_rdp_and_prv_accountants_agree() -> None:
    """Two independent analyses of the same (σ, q, steps): PRV is tighter, RDP within ~10%."""
    history = {"noise_multiplier": 4.0, "sample_rate": 0.01, "steps": 10_000, "delta": 1e-5}
    rdp = GaussianHistory(**history, accountant="rdp").epsilon()  # type: ignore[arg-type]
    prv = GaussianHistory(**history, accountant="prv").epsilon()  # type: ignore[arg-type]
    assert prv <= rdp <= prv * 1.15
    assert 0.8 < prv < 1.2


def test_plan_matches_opacus_loader() -> None:
    n, batch = 91, 32
    plan = DPPlan.for_run(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, num_examples=n,
                          batch_size=batch, epochs=4)
    assert plan.steps_per_epoch == math.ceil(n / batch)
    model = build_model(ModelSpec(5, 2, (4,)))
    data = TensorDataset(torch.randn(n, 5), torch.from_numpy(np.arange(n) % 2))
    loader = DataLoader(data, batch_size=batch)
    _, _, private_loader, engine = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan)
    assert len(private_loader) == plan.steps_per_epoch
    assert private_loader.sample_rate == pytest.approx(plan.sample_rate)


def test_noise_really_applied() -> None:
    """Two DP steps from the same start and batch differ: Opacus adds real noise."""
    torch.manual_seed(0)
    base = build_model(ModelSpec(5, 2, (4,)))
    x, y = torch.randn(64, 5), torch.from_numpy(np.arange(64) % 2)
    plan = DPPlan.for_run(target_epsilon=1.0, delta=1e-5, max_grad_norm=1.0, num_examples=64,
                          batch_size=64, epochs=1)
    results = []
    for _ in range(2):
        model = build_model(ModelSpec(5, 2, (4,)))
        model.load_state_dict(base.state_dict())
        loader = DataLoader(TensorDataset(x, y), batch_size=64)
        private, opt, _, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader, plan)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(private(x), y).backward()
        opt.step()
        results.append(model[1].weight.detach().clone())
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize("kwargs", [{"target_epsilon": 0}, {"delta": 1.5}, {"sample_rate": 0}])
def test_invalid_targets(kwargs: dict[str, float]) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10} | kwargs
    with pytest.raises(ConfigurationError):
        calibrate_noise(**args)  # type: ignore[arg-type]


def test_unknown_accountant() -> None:
    with pytest.raises(ConfigurationError, match="rdp, prv"):
        create_accountant("moments")
