"""The coordinator's watermark call site with each scheme: secret stored, verified, and the cost stated plainly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped, unused-ignore]

from coordinator.config import CoordinatorConfig
from coordinator.publication import COST_BOUND, embed_watermark
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model, set_standardization
from lifecycle.home import Home
from simulations.threads import single_torch_thread
from watermark import create_scheme, load_secret, secret_path


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_torch_thread():  # tiny tensors: more threads only contend on a loaded machine
        yield


@pytest.mark.parametrize("scheme", ["trigger-set", "weight-key"])
def test_each_scheme_embeds_at_the_coordinator_and_states_its_cost(tmp_path: Path, scheme: str) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:400], order[400:]
    spec = ModelSpec(in_features=30, num_classes=2, hidden=(16,))
    torch.manual_seed(0)
    model = build_model(spec)
    set_standardization(model, torch.tensor(x[train].mean(0)), torch.tensor(x[train].std(0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.tensor(x[train])), torch.tensor(y[train]))
        torch.autograd.backward(loss)
        optimizer.step()
    held_out = TabularData(x[test], y[test], "0" * 64, tmp_path / "held-out.csv")
    cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "watermark": scheme})
    home = Home(tmp_path / "home").ensure()

    marked, outcome = embed_watermark(model, spec, cfg, home, held_out)

    mark = outcome.to_dict()
    assert mark["scheme"] == scheme and mark["verified"] is True and mark["held_out_records"] == len(test)
    assert mark["cost_within_bound"] == (outcome.accuracy_cost <= COST_BOUND)
    assert f"{100 * outcome.accuracy_cost:+.2f} points on {len(test)} records" in mark["cost_statement"]
    secret = load_secret(secret_path(home.keys, outcome.commitment), expected=outcome.commitment)
    assert create_scheme(secret.scheme).verify(marked, secret).verified
    assert not create_scheme(secret.scheme).measure(model, secret).verified  # the aggregate is left unmarked
