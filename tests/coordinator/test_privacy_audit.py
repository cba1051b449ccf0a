"""The coordinator's audit of a canary-planted run, on real models: a planted bug fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.privacy_audit import audit_section, canary_losses, claimed_epsilon
from coordinator.strategies.tracked import SiteLedger
from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from privacy.audit import PrivacyAuditFailed, raise_if_failed
from privacy.audit.canaries import make_canaries
from simulations.datasets import load_dataset


def _train(features: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0) -> torch.nn.Module:
    """Plain full-batch Adam, no DP: what a site with broken DP-SGD would effectively run."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(features.shape[1], 2, (64, 64)))
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    set_standardization(model, *reference_standardization(x))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return model


def test_a_non_private_run_claiming_a_tiny_epsilon_fails_the_audit_loudly() -> None:
    data = load_dataset("breast-cancer")
    canaries = make_canaries(data.features, data.labels, 2, 200, 1, seed=3)
    planted_x, planted_y = canaries.at_site(0)
    model = _train(np.concatenate([data.features, planted_x]), np.concatenate([data.labels, planted_y]), 300)
    losses = canary_losses(model, canaries)
    assert losses[canaries.included].mean() < losses[~canaries.included].mean()  # memorised
    section = audit_section(model, canaries, "digest", epsilon=0.1, delta=1e-5)  # the planted bug: ε = 0.1 claimed
    assert section["epsilon_lower_bound"] > 0.1 and section["passed"] is False
    with pytest.raises(PrivacyAuditFailed, match=r"exceeds the ledger's ε = 0\.100"):
        raise_if_failed(section, "demo:1")


def test_an_untrained_model_leaks_nothing() -> None:
    data = load_dataset("breast-cancer")
    canaries = make_canaries(data.features, data.labels, 2, 200, 1, seed=4)
    section = audit_section(_train(data.features, data.labels, 0), canaries, "d", epsilon=0.1, delta=1e-5)
    assert section["passed"] is True and section["epsilon_lower_bound"] <= 0.1


def test_claimed_epsilon_is_the_worst_site_or_none_without_dp() -> None:
    sites = {"site-0": SiteLedger("site-0", dp={"epsilon": 0.8}), "site-1": SiteLedger("site-1", dp={"epsilon": 1.3})}
    assert claimed_epsilon(sites) == 1.3
    assert claimed_epsilon({**sites, "site-2": SiteLedger("site-2", dp={"epsilon": None})}) is None
